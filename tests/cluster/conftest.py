"""The local cluster of the cluster tests (cluster/local): two network-namespace hosts, SLURM on
both (munge, slurmctld, two slurmd) and, for the Ray tests, a Ray head and a worker. Session-wide
(the Ray cluster: for its test module); torn down by PID. Skipped, saying why, where root or
namespaces (or SLURM) are unavailable."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.local import Network, unavailable
from cluster_helpers import REPO, TRAIN_CONFIG, TRAIN_OVERRIDES, job_env


@pytest.fixture(scope="session")
def cluster_root():
    # Short and under /tmp: Ray's socket paths have a length limit; shared by every "host".
    root = Path(tempfile.mkdtemp(prefix="lmc", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hosts(cluster_root):
    why = unavailable()
    if why:
        pytest.skip(f"local cluster unavailable: {why}")
    with Network(2, cluster_root / "net") as net:
        yield net


@pytest.fixture(scope="session")
def slurm(hosts, cluster_root):
    from cluster.local.slurm import SlurmCluster, unavailable as slurm_unavailable

    why = slurm_unavailable()
    if why:
        pytest.skip(f"SLURM unavailable: {why}")
    cluster = SlurmCluster(hosts, cluster_root / "slurm", cpus_per_node=2)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def ray_cluster(hosts, cluster_root):
    """Up for the module that uses it (test_ray_cluster.py), then down: with a Ray cluster left on
    the hosts, the SLURM 2-node restart test's gloo ranks failed to connect after the restart."""
    from cluster.local.ray import RayCluster

    # The nodes' shard cache in this session's temp dir, as the other runs' (not in ~/.cache).
    cluster = RayCluster(hosts, cluster_root / "ray", cpus_per_node=2,
                         env=job_env(LAMAMBA_DATA_CACHE=str(cluster_root / "cache")))
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def digits_latents(cluster_root):
    """sklearn's digits as identity 'latents', on the filesystem every host shares."""
    from data_pipeline import EncodeConfig, run_encode
    from lamamba.config import load_config

    cfg = load_config(EncodeConfig, None, [f"run_dir={cluster_root / 'encode'}", "source.kind=digits",
                                           "autoencoder.kind=identity", "autoencoder.image_channels=1",
                                           "resolution=8", "ray.num_workers=0"])
    return run_encode(cfg).manifest_url


@pytest.fixture(scope="session")
def reference_run(cluster_root, digits_latents):
    """The uninterrupted run every interrupted one must reproduce: 2 CPU ranks on one machine."""
    root = cluster_root / "reference"
    cmd = [sys.executable, "-m", "launcher.cli", "submit", "train", TRAIN_CONFIG, f"data.manifest={digits_latents}",
           *TRAIN_OVERRIDES, "--backend", "local", "--gpus-per-node", "2", "--runs-root", str(root), "--follow"]
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(LAMAMBA_DATA_CACHE=str(cluster_root / "cache")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir
