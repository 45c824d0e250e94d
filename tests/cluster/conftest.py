"""The local cluster of the cluster tests (cluster/local): two network-namespace hosts, SLURM on
both (munge, slurmctld, two slurmd) and, for the Ray tests, a Ray head and worker. Session-wide;
torn down by PID. Skipped, saying why, where root or namespaces (or SLURM) are unavailable."""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.local import Network, unavailable

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def ray_cluster(hosts, cluster_root):
    from cluster.local.ray import RayCluster

    cluster = RayCluster(hosts, cluster_root / "ray", cpus_per_node=2, env=job_env())
    yield cluster
    cluster.close()


def job_env(**extra: str) -> dict:
    """The environment of the processes the cluster runs: this checkout first on the path, one
    thread per process, this interpreter's tools first on PATH (as a cluster image would have)."""
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}
