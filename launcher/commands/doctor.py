"""Check the environment a job would run in, print what it will use and what is wrong.

  lamamba doctor                                   # this machine, as a training rank would see it
  lamamba doctor configs/train/xl_256.yaml         # ... for that run (device, backend, S3, weights)
  lamamba doctor CONFIG --job sample key=value     # a sample (or encode, evaluate) config
  lamamba doctor engine.device=cuda                # the default train config with overrides
  lamamba doctor --run-dir DIR --job train         # the config the launcher saved for a run

Checks: the torch build and its CUDA runtime against the NVIDIA driver, the GPUs visible and the
device each rank would take, NCCL, the selective-scan backend `auto` picks and why, Triton,
DeepSpeed, the S3 endpoint (reachable) and credentials (present; never printed), the VAE and
Inception weight files with their sha256, free disk where the latent cache goes.

Exit code 0 when the job would start (warnings are printed but do not fail), 1 when a check
failed: the line marked FAIL says why and what to do. The SLURM and Ray job templates run it on
every node before the job itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

HELP = "check the environment a job would run in (GPUs, CUDA, NCCL, scan backend, S3, weights, disk)"
OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_CACHE_GB = 10.0  # warn below this when the data set's size is unknown


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="the job's config YAML (default: the defaults of --job)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--job", default="train", choices=("train", "sample", "encode", "evaluate"),
                        help="which job the config is for (default train)")
    parser.add_argument("--run-dir", default="", help="check the config the launcher saved in this run dir")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON list")


# ---- the job's needs, read from its config -----------------------------------------------------
@dataclass
class Needs:
    device: str = "auto"
    backend: str = ""
    scan_backend: str = "auto"
    d_state: int = 1
    urls: tuple[str, ...] = ()
    storage_options: tuple[dict, ...] = ()
    vae: Any = None  # AutoencoderConfig or None
    inception: str = ""
    uses_cache: bool = False
    deepspeed: bool = False
    manifest: str = ""


def job_needs(job: str, cfg: Any) -> Needs:
    """What the job's config asks of the environment."""
    if job == "train":
        return Needs(cfg.engine.device, cfg.engine.backend, cfg.model.scan_backend, cfg.model.d_state,
                     (cfg.run_dir, cfg.data.manifest, cfg.checkpoint_dir),
                     (cfg.data.storage_options, cfg.checkpoint.storage_options), cfg.autoencoder, "",
                     True, True, cfg.data.manifest)
    if job == "sample":
        return Needs(cfg.device, "", "auto", 1, (cfg.run_dir, cfg.checkpoint, cfg.out_url), (), cfg.autoencoder,
                     cfg.extractor.weights if cfg.outputs != "images" and cfg.extractor.kind == "inception" else "")
    if job == "encode":
        return Needs("cuda" if cfg.ray.gpus_per_worker > 0 else "cpu", "", "auto", 1,
                     (cfg.run_dir, cfg.output_url), (cfg.storage_options,), cfg.autoencoder)
    return Needs(cfg.extractor.device, "", "auto", 1, (cfg.run_dir, cfg.samples, cfg.reference), (), None,
                 cfg.extractor.weights if cfg.extractor.kind == "inception" else "")


# ---- the checks ----------------------------------------------------------------------------------
def check_torch_and_device(needs: Needs, env) -> tuple[list[Check], Any]:
    from lamamba import devices

    probe = devices.probe_cuda()
    cuda = f"CUDA {probe.build_cuda}" if probe.build_cuda else "CPU-only build"
    checks = [Check("torch", OK, f"{probe.torch_version} ({cuda}); NVIDIA driver {probe.driver or 'none'}")]
    local_rank = int(env.get("LOCAL_RANK", "0"))
    try:
        choice = devices.select_device(needs.device, local_rank, env=env, backend=needs.backend, probe=probe)
    except devices.GPUUnavailableError as err:
        checks.append(Check("device", FAIL, str(err)))
        return checks, None
    if probe.available:
        names = ", ".join(f"{i}: {n}" for i, n in enumerate(probe.device_names))
        checks.append(Check("gpus", OK, f"{probe.device_count} visible ({names}); "
                                        f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}"))
    checks.append(Check("device", WARN if choice.fallback else OK, f"{choice.device}: {choice.reason}"))
    return checks, choice.device


def check_nccl(needs: Needs, device) -> Check:
    import torch
    import torch.distributed as dist

    if device is None or device.type != "cuda":
        if needs.backend == "nccl":
            return Check("nccl", FAIL, "engine.backend=nccl needs CUDA devices")
        return Check("nccl", OK, "not needed (gloo on the CPU)")
    if not dist.is_nccl_available():
        return Check("nccl", FAIL, "this torch build has no NCCL; install the CUDA build of torch (docs/cluster.md)")
    version = ".".join(map(str, torch.cuda.nccl.version()))
    return Check("nccl", OK, f"NCCL {version}")


def check_scan(needs: Needs, device) -> Check:
    """The backend `auto` (or the named one) gives this job's scans, and why; FAIL where the job
    would refuse to start (a fallback that cannot fit, a kernel that does not run)."""
    import torch

    from lamamba import ops

    try:
        name, reason = ops.explain_backend(needs.scan_backend, device or torch.device("cpu"), needs.d_state)
    except (ops.ScanBackendError, ValueError) as err:
        return Check("scan", FAIL, str(err))
    return Check("scan", OK, f"{name}: {reason}")


def check_package(name: str, needed: bool, why: str) -> Check:
    if importlib.util.find_spec(name) is None:
        return Check(name, FAIL if needed else OK, f"not installed ({why})")
    try:
        module = importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure is what the job would hit
        return Check(name, FAIL if needed else WARN, f"installed but does not import: {type(err).__name__}: {err}")
    return Check(name, OK, f"{getattr(module, '__version__', 'installed')}")


def check_s3(needs: Needs, env, timeout_s: float = 5.0) -> list[Check]:
    """Every s3:// URL the job uses: the endpoint reachable, credentials present (never printed)."""
    urls = [u for u in needs.urls if u and u.startswith(("s3://", "s3a://"))]
    if not urls:
        return []
    options: dict = {}
    for extra in needs.storage_options:
        options.update(extra or {})
    endpoint = (options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
                or env.get("LAMAMBA_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL"))
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    target = endpoint or f"https://s3.{region}.amazonaws.com"
    parsed = urlparse(target)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    checks = []
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            checks.append(Check("s3 endpoint", OK, f"{parsed.scheme}://{parsed.hostname}:{port} reachable "
                                                   f"(for {', '.join(urls)})"))
    except OSError as err:
        checks.append(Check("s3 endpoint", FAIL, f"{parsed.scheme}://{parsed.hostname}:{port} not reachable "
                                                 f"({err}); set LAMAMBA_S3_ENDPOINT or storage_options.endpoint_url"))
    if options.get("key") or options.get("anon"):
        source = "storage_options"
    elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        source = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    elif env.get("AWS_PROFILE") or os.path.isfile(os.path.expanduser("~/.aws/credentials")):
        source = "an AWS profile (~/.aws/credentials)"
    elif env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        source = "the pod/task role"
    else:
        source = ""
    checks.append(Check("s3 credentials", OK if source else WARN,
                        f"present, from {source}" if source else
                        "none found in storage_options, the environment or ~/.aws (an instance role may "
                        "still provide them)"))
    return checks


def _weights_file(path: str, what: str, expected_prefix: str = "") -> Check:
    from lamamba import storage

    if not os.path.exists(path):
        return Check(what, FAIL, f"{path} does not exist")
    digest = storage.sha256(path)
    if expected_prefix and not digest.startswith(expected_prefix):
        return Check(what, FAIL, f"{path}: sha256 {digest} does not start with {expected_prefix}, "
                                 "the hash in its name: a different or damaged file")
    return Check(what, OK, f"{path} sha256 {digest}")


def check_weights(needs: Needs) -> list[Check]:
    checks = []
    vae = needs.vae
    if vae is not None and vae.kind == "sd-vae":
        if os.path.isdir(vae.path_or_id):
            files = sorted(f for f in os.listdir(vae.path_or_id) if f.endswith((".safetensors", ".bin")))
            if files:
                checks.append(_weights_file(os.path.join(vae.path_or_id, files[0]), "vae weights"))
            else:
                checks.append(Check("vae weights", FAIL, f"{vae.path_or_id} holds no .safetensors/.bin weights"))
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(vae.path_or_id, "diffusion_pytorch_model.safetensors")
            if isinstance(cached, str):
                checks.append(_weights_file(cached, "vae weights"))
            else:
                checks.append(Check("vae weights", FAIL, f"{vae.path_or_id!r} is neither a local directory nor in "
                                                         "the Hugging Face cache (jobs load it offline)"))
    if needs.inception:
        stem = os.path.splitext(os.path.basename(needs.inception))[0]
        prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
        checks.append(_weights_file(needs.inception, "inception weights",
                                    prefix if len(prefix) == 8 and all(c in "0123456789abcdef" for c in prefix) else ""))
    return checks


def check_cache_disk(needs: Needs) -> Check | None:
    if not needs.uses_cache:
        return None
    from lamamba.data.cache import default_cache_dir

    directory = default_cache_dir()
    probe = directory
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    free_gb = shutil.disk_usage(probe).free / 1e9
    need_gb = _manifest_gb(needs.manifest)
    if need_gb is not None and free_gb < need_gb:
        return Check("cache disk", FAIL, f"{directory}: {free_gb:.1f} GB free, the data set needs about "
                                         f"{need_gb:.1f} GB; set LAMAMBA_DATA_CACHE to a larger disk")
    status = WARN if need_gb is None and free_gb < MIN_FREE_CACHE_GB else OK
    need = f", the data set needs about {need_gb:.1f} GB" if need_gb is not None else ""
    return Check("cache disk", status, f"{directory}: {free_gb:.1f} GB free{need}")


def _manifest_gb(manifest: str) -> float | None:
    """Size of the latent cache the data set fills (float16 moments of every item and its flip),
    from its manifest; None if the manifest cannot be read here."""
    if not manifest:
        return None
    from lamamba.data.manifest import read_manifest

    try:
        man = read_manifest(manifest)
        items = sum(int(s["num_items"]) for s in man["shards"])
        return items * 2 * 2 * int(man["channels"]) * int(man["latent_size"]) ** 2 * 2 / 1e9
    except Exception:  # noqa: BLE001 - unreadable from here (no credentials yet, ...): size unknown
        return None


def run_checks(job: str, cfg: Any, env=None) -> list[Check]:
    env = os.environ if env is None else env
    needs = job_needs(job, cfg)
    checks, device = check_torch_and_device(needs, env)
    checks.append(check_nccl(needs, device))
    if job == "train" and cfg.model.backbone == "lamamba":  # DiT has no scan
        checks.append(check_scan(needs, device))
    on_gpu = device is not None and device.type == "cuda"
    checks.append(check_package("triton", False, "only the Triton scan backend needs it"))
    if needs.deepspeed:
        checks.append(check_package("deepspeed", True, "training needs it: pip install the project"))
    checks += check_s3(needs, env)
    checks += check_weights(needs)
    disk = check_cache_disk(needs)
    if disk is not None:
        checks.append(disk)
    if not on_gpu and job == "train" and device is not None:
        checks.append(Check("summary", WARN, "this job would train on the CPU"))
    return checks


def load_job(args) -> Any:
    from launcher.jobs import get_job
    from lamamba.config import load_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not os.path.exists(config):  # `lamamba doctor key=value`: no config
        config, overrides = None, [config, *overrides]
    if args.run_dir:
        from launcher.entrypoint import local_config

        config = local_config(args.run_dir)
    return load_config(get_job(args.job).load_class(), config or None, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_job(args)
    with contextlib.redirect_stdout(sys.stderr):  # what imported libraries print stays out of --json
        checks = run_checks(args.job, cfg)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}")
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        print(f"lamamba doctor: the {args.job} job would fail here: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
