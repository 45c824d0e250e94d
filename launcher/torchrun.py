"""The torchrun command line of one node: the one place that knows torchrun's flags.

Both the entrypoint (standalone and SLURM rendezvous) and the Ray placement
(:mod:`launcher.ray_torchrun`) build a node's command here, so neither imports the other.
"""

from __future__ import annotations


def torchrun_prefix(python: str, nnodes: int, nproc_per_node: int, node_rank: int = 0,
                    master_addr: str = "", master_port: int = 0, log_dir: str = "") -> list[str]:
    """``python -m torch.distributed.run ...`` for one node; a single node uses a standalone store."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and not master_addr:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}",
                f"--master-addr={master_addr}", f"--master-port={master_port}"]
    if log_dir:  # per-rank stdout/stderr files, also teed to this process's output
        cmd += [f"--log-dir={log_dir}", "--tee=3"]
    return cmd
