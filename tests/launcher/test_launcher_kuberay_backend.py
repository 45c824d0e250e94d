"""The KubeRay backend against a fake kubectl that records its arguments."""

import pytest
import yaml

from launcher import runs
from launcher.cli import main


@pytest.fixture
def fake_kubectl(fake_tools):
    install, fake_dir, calls = fake_tools
    install({"kubectl": None})
    return fake_dir, calls


def test_kuberay_submit_status_logs_cancel(fake_kubectl, tmp_path, capsys):
    fake_dir, calls = fake_kubectl
    config = tmp_path / "digits.yaml"
    config.write_text("source: {kind: digits}\n")
    root = str(tmp_path / "runs")
    argv = ["submit", "encode", str(config), "--backend", "kuberay", "--nodes", "2", "--gpus-per-node", "0",
            "--image", "reg/lamamba:1", "--namespace", "ml", "--runs-root", root]
    assert main(argv) == 0
    run_id = capsys.readouterr().out.split()[1]
    record = runs.find_run(run_id, root)
    manifest_path = f"{record.run_dir}/launch/rayjob.yaml"
    assert calls() == [f"kubectl create -f {manifest_path}"]
    manifest = yaml.safe_load(open(manifest_path))
    assert manifest["metadata"] == {"name": f"{run_id}-1", "namespace": "ml",
                                    "labels": {"app.kubernetes.io/name": "lamamba", "lamamba.io/run-id": run_id,
                                               "lamamba.io/job": "encode"}}
    worker = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 2 and "nvidia.com/gpu" not in worker["template"]["spec"]["containers"][0]["resources"]["limits"]

    for printed, state in [("", "PENDING"), ("RUNNING Running", "RUNNING"), (" Initializing", "PENDING"),
                           ("FAILED Failed", "FAILED"), ("SUCCEEDED Complete", "SUCCEEDED")]:
        (fake_dir / "kubectl.out").write_text(printed)
        assert main(["status", run_id, "--runs-root", root]) == 0
        assert f" {state} " in capsys.readouterr().out, printed
    assert calls()[-1] == (f"kubectl --namespace ml get rayjob {run_id}-1 "
                           "--output=jsonpath={.status.jobStatus} {.status.jobDeploymentStatus}")

    (fake_dir / "kubectl.out").write_text("encoded 2 shards\n")
    assert main(["logs", run_id, "--runs-root", root]) == 0
    assert capsys.readouterr().out == "encoded 2 shards\n"
    assert calls()[-1] == f"kubectl --namespace ml logs job/{run_id}-1"

    (fake_dir / "kubectl.out").write_text("RUNNING Running")
    assert main(["cancel", run_id, "--runs-root", root]) == 0
    assert calls()[-1] == f"kubectl --namespace ml delete rayjob {run_id}-1"
    (fake_dir / "kubectl.rc").write_text("1")  # the RayJob is gone
    assert main(["status", run_id, "--runs-root", root]) == 0
    assert " STOPPED " in capsys.readouterr().out


def test_kubectl_failure_is_one_line(fake_kubectl, tmp_path, capsys):
    fake_dir, _ = fake_kubectl
    (fake_dir / "kubectl.rc").write_text("1")
    (fake_dir / "kubectl.out").write_text('error: the server doesn\'t have a resource type "rayjob"\n')
    config = tmp_path / "digits.yaml"
    config.write_text("source: {kind: digits}\n")
    assert main(["submit", "encode", str(config), "--backend", "kuberay", "--runs-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "kubectl create failed (exit 1)" in err and "rayjob" in err
