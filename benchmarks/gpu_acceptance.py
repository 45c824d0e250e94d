"""The GPU acceptance benchmarks and report (run by benchmarks/gpu_acceptance.sh).

Training: XL at 256 and 512 px, one GPU, images/s, MFU and peak memory over a micro-batch sweep,
with and without activation checkpointing (benchmarks/bench_train.py's real DeepSpeed bf16 step,
one fresh torchrun job per setting; an out-of-memory setting ends its sweep). Sampling: XL at 256
px, DDPM with 250 steps and CFG: images/s from timed steps. Writes acceptance.json and
acceptance.md (with the `cuda` tests' outcome from the junit file the script passes).

``--cpu --quick`` runs the same code with the tiny preset at small sizes on the CPU, for CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import launch, table  # noqa: E402


def training_sweep(args) -> list[dict]:
    preset, resolutions, micros = ("tiny", (64,), (2,)) if args.quick else ("XL", (256, 512), (8, 16, 32, 64, 128))
    common = ["--steps=1" if args.quick else "--steps=5", f"--peak-tflops={args.peak_tflops}"]
    # The default precision over the whole sweep; plain bf16 (bf16-rounded SSM parameters, bf16
    # activations) beside it at the first resolution without checkpointing, to price the default
    # (docs/training.md).
    settings = [(resolution, ckpt, "bf16-autocast") for resolution in resolutions for ckpt in ("none", "all")]
    settings.append((resolutions[0], "none", "bf16"))
    rows = []
    for resolution, ckpt, precision in settings:
        for micro in micros:
            row = launch({"preset": preset, "stage": 2, "resolution": resolution, "batch": micro, "micro": micro,
                          "ckpt": ckpt, "precision": precision, "warmup": 0 if args.quick else 2}, 1, common)
            if row is None:  # out of memory (or failed): larger micro-batches will not fit either
                rows.append({"preset": preset, "resolution": resolution, "ckpt": ckpt, "precision": precision,
                             "micro_batch": micro, "failed": True})
                break
            rows.append(row)
    return rows


def sampling(args, device: torch.device) -> dict:
    from lamamba.diffusion import create_diffusion, guided_forward
    from lamamba.models import ModelConfig, build_model

    preset, size, batch, timed = ("tiny", 8, 2, 2) if args.quick else ("XL", 32, 32, 10)
    steps = 250
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset, input_size=size, in_channels=4, num_classes=1000)).to(device).eval()
    diffusion = create_diffusion(timestep_respacing=str(steps))
    x = torch.randn(batch, 4, size, size, device=device)
    y = torch.arange(batch, device=device) % 1000
    noise = torch.randn_like(x)

    def fn(x, t, y):
        return guided_forward(model, x, t, y, scale=1.5, null_label=1000, eps_channels=4)

    def step(i):
        t = torch.full((batch,), steps - 1 - i, device=device, dtype=torch.long)
        return diffusion.p_sample(fn, x, t, noise, model_kwargs={"y": y})

    with torch.no_grad():
        step(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for i in range(timed):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / timed
    return {"preset": preset, "resolution": size * 8, "batch": batch, "steps": steps, "cfg_scale": 1.5,
            "timed_steps": timed, "s_per_step": per_step, "images_per_s": batch / (per_step * steps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def tests_outcome(junit: str) -> dict:
    if not junit or not Path(junit).exists():
        return {"ran": False}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {"ran": True, **{k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--junit", default="")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for MFU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA device; use --cpu --quick for the CPU form", file=sys.stderr)
        return 1
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick,
        "tests": tests_outcome(args.junit), "training": training_sweep(args), "sampling": sampling(args, device),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    trained = [r for r in report["training"] if not r.get("failed")]
    s = report["sampling"]
    md = [f"# GPU acceptance: {report['device']} (torch {report['torch']}, CUDA {report['cuda']})", "",
          f"cuda tests: {report['tests']}", "", "## Training (one GPU, ZeRO-2, bf16)", "", table(trained) if trained
          else "(no setting ran)", "", "## Sampling (DDPM 250 steps, CFG 1.5)", "",
          f"{s['preset']} at {s['resolution']} px, batch {s['batch']}: {s['images_per_s']:.3g} images/s "
          f"({s['s_per_step'] * 1e3:.1f} ms per step over {s['timed_steps']} timed steps)", ""]
    (out / "acceptance.md").write_text("\n".join(md))
    print("\n".join(md))
    failed = report["tests"].get("failures", 0) + report["tests"].get("errors", 0)
    return 1 if failed or not trained else 0


if __name__ == "__main__":
    sys.exit(main())
