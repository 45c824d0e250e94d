"""Checkpoints as untrusted input and as a shared resource: no file kind runs code when loaded,
object keys stay inside the staging folder, staging is private to a run, one writer per
checkpoint directory (a lease), committed checkpoints are never overwritten, damaged commits
fall back to the previous good one, and resume refuses another architecture before loading."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from lamamba import storage
from lamamba.config import ConfigError
from lamamba.training import checkpointer as ckpt
from lamamba.training.distributed import World
from lamamba.training.lease import Lease, LeaseHeldError
from lamamba.training.safe_load import UnsafeCheckpointError, safe_torch_load
from training_helpers import launch, output, wait

WORLD = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
STEP4 = "step_00000004"


class RunsCode:
    """Pickles as a call of os.system: what a hostile checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path, marker) -> None:
    torch.save({"module": RunsCode(marker)}, path)


def resign(ckpt_dir) -> None:
    """Rewrite COMMITTED's sizes and checksums for the files as they are now (what an attacker
    who can write the checkpoint can do as well)."""
    commit = json.loads((ckpt_dir / "COMMITTED").read_text())
    for name in commit["files"]:
        path = ckpt_dir / name
        commit["files"][name] = {"size": path.stat().st_size, "sha256": storage.sha256(str(path))}
    (ckpt_dir / "COMMITTED").write_text(json.dumps(commit))


def copy_checkpoints(reference, run_dir):
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    return run_dir / "checkpoints"


def test_crafted_pickle_in_each_checkpoint_file_kind_is_refused_and_nothing_runs(tmp_path, reference_z2,
                                                                                reference_z3):
    for reference in (reference_z2, reference_z3):  # the allow-list opens DeepSpeed's real files
        for path in sorted((reference / "checkpoints" / STEP4 / "deepspeed").glob("*.pt")):
            assert isinstance(safe_torch_load(str(path), map_location="cpu"), dict)
    marker = tmp_path / "code-ran"
    probe = tmp_path / "probe.pt"
    craft(probe, marker)
    torch.load(probe, weights_only=False)  # the crafted file does run code when unpickled...
    assert marker.exists()
    marker.unlink()
    checkpoint = copy_checkpoints(reference_z2, tmp_path / "run") / STEP4
    pt = lambda p: safe_torch_load(p, map_location="cpu")  # noqa: E731
    kinds = {  # every file kind a checkpoint holds, with the loader resume uses for it
        "deepspeed/mp_rank_00_model_states.pt": pt, "deepspeed/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": pt,
        "rng/rank_00001.json": ckpt._read_json, "trainer_state.json": ckpt._read_json,
        "ema_0.99.safetensors": ckpt._load_safetensors, "consolidated.safetensors": ckpt._load_safetensors,
        "COMMITTED": lambda p: ckpt.read_commit(os.path.dirname(p)),
    }
    present = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    like = set(kinds) | {"deepspeed/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng/rank_00000.json",
                         "ema.safetensors"}
    assert present <= like | {"config.yaml"}, f"a new file kind to cover: {present - like}"  # yaml: safe_load
    assert not any(checkpoint.rglob("*.py")), "DeepSpeed's recovery scripts are code: not kept in checkpoints"
    for name, loader in kinds.items():
        path = checkpoint / name
        craft(path, marker)
        with pytest.raises((UnsafeCheckpointError, ckpt.CheckpointError)) as refused:
            loader(str(path))
        assert str(path) in str(refused.value), name
        assert not marker.exists(), f"loading a crafted {name} ran its code"


def test_resume_refuses_a_crafted_deepspeed_file_before_it_runs(tmp_path, digits_manifest, reference_z2):
    run_dir = tmp_path / "run"
    checkpoint = copy_checkpoints(reference_z2, run_dir) / STEP4
    marker = tmp_path / "code-ran"
    target = checkpoint / "deepspeed" / "mp_rank_00_model_states.pt"
    craft(target, marker)
    resign(checkpoint)
    rc = wait(launch(run_dir, digits_manifest, 2, "engine.zero_stage=2", "max_steps=6"), run_dir)
    log = output(run_dir)
    assert rc != 0 and f"refusing to load checkpoint file {target}" in log, log[-3000:]
    assert "GLOBAL posix.system" in log or "GLOBAL os.system" in log
    assert not marker.exists()
    assert not (checkpoint.parent / "step_00000006").exists()  # nothing trained on it


def test_s3_checkpoint_download_keeps_object_keys_inside_staging(tmp_path, s3_server):
    options = s3_server.bucket("ckpt-keys")
    url = "s3://ckpt-keys/run/checkpoints"
    fs, root = storage.filesystem(url, options)
    step = f"{root}/step_00000002"
    fs.pipe_file(f"{step}/trainer_state.json", b"{}")
    outside = tmp_path / "outside.txt"
    record = {"step": 2, "world_size": 1, "files": {f"../../../../../..{outside}": {"size": 1, "sha256": "0"}}}
    fs.pipe_file(f"{step}/COMMITTED", json.dumps(record).encode())
    fs.pipe_file(f"{root}/outside.txt", b"x")
    checkpointer = ckpt.Checkpointer(url, WORLD, staging_dir=str(tmp_path / "staging"), storage_options=options)
    checkpointer.acquire()
    try:
        with pytest.raises(storage.UnsafePathError, match=r"object key under .*step_00000002.*\.\./"):
            checkpointer._fetch(2)
        assert not outside.exists()
        # A key listed by the store itself (a commit without a file list) is checked the same way.
        fs.pipe_file(f"{step}/COMMITTED", json.dumps({"step": 2, "world_size": 1}).encode())
        fs.pipe_file(f"{step}/rng/..", b"x")
        with pytest.raises(storage.UnsafePathError, match=r"rng/\.\."):
            checkpointer._fetch(2)
    finally:
        checkpointer.close()


def test_two_runs_on_one_node_get_private_staging_dirs(tmp_path, s3_server):
    options = s3_server.bucket("ckpt-staging")
    base = tmp_path / "scratch"
    runs = [ckpt.Checkpointer(f"s3://ckpt-staging/run{i}/checkpoints", WORLD, staging_dir=str(base),
                              storage_options=options) for i in range(2)]
    for run in runs:
        run.acquire()
    a, b = (run.staging for run in runs)
    assert a != b and os.path.dirname(a) == os.path.dirname(b) == str(base)
    assert all(os.stat(d).st_mode & 0o777 == 0o700 for d in (a, b))
    (open(os.path.join(b, "other-run-file"), "w")).close()
    runs[0].close()  # the first run ends and cleans up: only its own directory
    assert not os.path.exists(a) and os.path.exists(os.path.join(b, "other-run-file"))
    runs[1].close()


HOLDER = """
import sys, time
from lamamba.training.lease import Lease
Lease(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(600)
"""


def test_local_lease_one_writer_and_kill9_releases_it(tmp_path):
    ckpts = str(tmp_path / "run" / "checkpoints")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ckpts], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        checkpointer = ckpt.Checkpointer(ckpts, WORLD)
        with pytest.raises(LeaseHeldError, match=rf"another run is writing checkpoints to {ckpts}: pid {holder.pid} "):
            checkpointer.acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    checkpointer.acquire()  # the kernel dropped the dead holder's lock
    second = Lease(ckpts)
    with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()} "):
        second.acquire()
    checkpointer.close()
    second.acquire()
    second.release()


def test_s3_lease_conditional_create_expiry_and_same_job_takeover(s3_server, monkeypatch):
    options = s3_server.bucket("ckpt-lease")
    url = "s3://ckpt-lease/run/checkpoints"
    first = Lease(url, options, ttl_s=60)
    first.acquire()
    with pytest.raises(LeaseHeldError, match=rf"pid {os.getpid()} on .*expires in \d+ s"):
        Lease(url, options, ttl_s=60).acquire()
    first.release()
    assert not storage.exists(f"{url}/LEASE", options)
    # A holder that died: its lease's expiry has passed.
    dead = {"id": "dead", "host": "node-7", "pid": 4242, "job": "", "started": 0, "expires": time.time() - 1}
    storage.write_bytes(f"{url}/LEASE", json.dumps(dead).encode(), options)
    taken = []
    lease = Lease(url, options, ttl_s=60, log=taken.append)
    lease.acquire()
    assert "expired lease: pid 4242 on node-7" in taken[0]
    lease.release()
    # An earlier attempt of the same scheduler job (requeued / restarted) is not a second writer.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    storage.write_bytes(f"{url}/LEASE", json.dumps({**dead, "job": "SLURM_JOB_ID=77",
                                                    "expires": time.time() + 60}).encode(), options)
    lease = Lease(url, options, ttl_s=60, log=taken.append)
    lease.acquire()
    assert "earlier attempt of this job" in taken[1]
    lease.release()


def test_unwritable_checkpoint_dir_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=rf"checkpoint.dir: checkpoint directory {blocker}/ckpts is not writable"):
        ckpt.Checkpointer(str(blocker / "ckpts"), WORLD).acquire()


def test_a_committed_checkpoint_is_never_overwritten(tmp_path, reference_z2):
    checkpoints = copy_checkpoints(reference_z2, tmp_path / "run")
    before = sorted(p.name for p in (checkpoints / STEP4).rglob("*"))
    checkpointer = ckpt.Checkpointer(str(checkpoints), WORLD)
    checkpointer.acquire()
    try:
        with pytest.raises(ckpt.CheckpointError, match=f"refusing to overwrite the committed checkpoint .*{STEP4}"):
            checkpointer.save(4, engine=None, ema=None, trainer_state={}, config_yaml="", model_cfg=None)
    finally:
        checkpointer.close()
    assert sorted(p.name for p in (checkpoints / STEP4).rglob("*")) == before


@pytest.mark.parametrize("name", ["deepspeed/mp_rank_00_model_states.pt", "ema.safetensors", "trainer_state.json"])
def test_damaged_newest_commit_falls_back_to_the_previous_good_one(tmp_path, reference_z2, name):
    checkpoints = copy_checkpoints(reference_z2, tmp_path / "run")
    commit = json.loads((checkpoints / STEP4 / "COMMITTED").read_text())
    assert all(set(r) == {"size", "sha256"} for r in commit["files"].values()) and name in commit["files"]
    damaged = checkpoints / STEP4 / name
    with open(damaged, "r+b") as f:  # truncated, as by a full disk or a killed copy
        f.truncate(damaged.stat().st_size // 2)
    said = []
    checkpointer = ckpt.Checkpointer(str(checkpoints), WORLD, log=said.append)
    checkpointer.acquire()
    try:
        assert checkpointer.find_resume_step() == 2
    finally:
        checkpointer.close()
    assert any(f"{STEP4} is damaged ({name} has" in line and "trying the previous one" in line for line in said), said
    assert not (checkpoints / STEP4 / "COMMITTED").exists() and (checkpoints / STEP4 / "DAMAGED").exists()
    # The same size with other bytes is caught by the checksum.
    checkpoints = copy_checkpoints(reference_z2, tmp_path / "run2")
    data = bytearray((checkpoints / STEP4 / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (checkpoints / STEP4 / name).write_bytes(bytes(data))
    assert not ckpt.verify_files(str(checkpoints / "step_00000002"),
                                 json.loads((checkpoints / "step_00000002" / "COMMITTED").read_text())["files"])
    assert ckpt.verify_files(str(checkpoints / STEP4), commit["files"]) == [f"{name} does not match its recorded sha256"]


def test_metrics_jsonl_has_each_step_once_after_a_resume(tmp_path):
    from lamamba.training.monitors import MetricsSinks

    sinks = MetricsSinks(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3):  # the interrupted attempt logged step 3 after its last commit (step 2)
        sinks.scalars({"step": step, "loss": 1.0})
    sinks.close()
    sinks = MetricsSinks(str(tmp_path), tensorboard=False, start_step=2)
    for step in (3, 4):
        sinks.scalars({"step": step, "loss": 0.5})
    sinks.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_with_another_architecture_is_refused_before_loading(tmp_path, digits_manifest, reference_z2):
    run_dir = tmp_path / "run"
    copy_checkpoints(reference_z2, run_dir)
    rc = wait(launch(run_dir, digits_manifest, 1, "model.base_width=64", "model.cond_dim=32"), run_dir)
    log = output(run_dir)
    assert rc == 2, log[-3000:]
    assert "belongs to a run with other model.base_width, model.cond_dim" in log
    assert "Traceback" not in log and "load_state_dict" not in log


def test_export_refuses_an_ema_file_that_does_not_match_its_commit(tmp_path, reference_z2, capsys):
    from launcher.cli import main

    checkpoints = copy_checkpoints(reference_z2, tmp_path / "run")
    ema = checkpoints / STEP4 / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte
    ema.write_bytes(bytes(data))
    assert main(["export", str(checkpoints / STEP4), "--out", str(tmp_path / "model.safetensors")]) == 1
    assert "is damaged: ema.safetensors does not match its recorded sha256" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()
