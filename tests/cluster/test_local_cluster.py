"""The local cluster itself: separate hosts (addresses, hostnames, names resolved), SLURM with a
node per host, and a teardown that leaves no process or namespace behind."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.local import Network, unavailable


def test_hosts_reach_each_other_by_name(hosts):
    server = hosts.hosts[0]
    listen = subprocess.Popen(server.command([sys.executable, "-c",
        "import socket; s = socket.create_server(('0.0.0.0', 7000)); c, a = s.accept(); "
        "c.sendall(socket.gethostname().encode() + b' ' + a[0].encode())"]))
    try:
        client = hosts.hosts[1].command([sys.executable, "-c",
            "import socket, time\n"
            "for _ in range(300):\n"  # up to 30 s for the server's interpreter to start on a loaded machine
            "    try: s = socket.create_connection(('node0', 7000), timeout=2); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "print(s.recv(100).decode(), socket.gethostname())"])
        out = subprocess.run(client, capture_output=True, text=True, timeout=30).stdout.split()
        assert out == ["node0", hosts.hosts[1].address, "node1"]
    finally:
        listen.kill()
        listen.wait()


def test_slurm_runs_one_task_on_each_node(slurm, cluster_root):
    out = slurm.run("srun", "--nodes=2", "--ntasks-per-node=1", "--label", "hostname", host=1)
    assert sorted(out.split()) == ["0:", "1:", "node0", "node1"]


def test_teardown_stops_every_process_and_deletes_the_namespaces():
    if unavailable():
        pytest.skip(f"local cluster unavailable: {unavailable()}")
    with tempfile.TemporaryDirectory() as root:
        prefix = f"lmteardown{os.getpid()}"  # two test sessions on one machine do not share it
        net = Network(1, Path(root), prefix=prefix)
        host = net.hosts[0]
        # Popen returns before nsenter has joined the namespace: wait for the line the command
        # prints once it is inside (the shell's echo is a builtin; exec keeps the pid).
        proc = subprocess.Popen(host.command(["sh", "-c", "echo inside; exec sleep 300"]),
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout.readline() == "inside\n"
        assert proc.pid in host.pids()
        net.close()
        assert proc.wait(timeout=10) != 0  # killed
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{prefix}-" not in names
