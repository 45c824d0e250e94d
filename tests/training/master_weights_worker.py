"""Run under torchrun (2 gloo ranks): for each ZeRO setting, train a small model a few steps and
check MasterLayout (weights and Adam moments, gathered onto rank 0 in several chunks) and EMA
against DeepSpeed's public per-parameter ``safe_get_full_fp32_param`` /
``safe_get_full_optimizer_state``: lamamba reads DeepSpeed's private optimizer fields, and this
fails when a DeepSpeed upgrade changes them.

Exits non-zero (an AssertionError naming the setting and parameter) on any mismatch.
"""

import sys

import torch
from torch import nn

from lamamba.training.distributed import broadcast_object, init_distributed, shutdown
from lamamba.training.ema import EMA

SETTINGS = [(1, "bf16"), (1, "fp32"), (2, "bf16"), (3, "bf16")]  # ZeRO-1 bf16 is DeepSpeed's BF16_Optimizer
DECAYS = (0.9, 0.5)


def reference_full(module, key=None):
    """DeepSpeed's per-parameter collective: {name: full fp32 master value (or Adam state ``key``)}."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if key is None:
        return {n: safe_get_full_fp32_param(p).detach().float().clone() for n, p in module.named_parameters()}
    return {n: safe_get_full_optimizer_state(p, key).detach().float().clone() for n, p in module.named_parameters()}


def check(stage: int, precision: str) -> None:
    import deepspeed

    torch.manual_seed(0)
    # Odd sizes, so that partitions cut parameters and ZeRO-3 pads the last piece.
    model = nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 5), nn.LayerNorm(5))
    ds = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
          "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 10**9}
    if precision == "bf16":
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    ema = EMA(engine, DECAYS)
    reference = {d: reference_full(engine.module) for d in DECAYS}
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(engine.global_rank)
    for _ in range(3):
        x = torch.randn(2, 7, generator=generator).to(dtype)
        engine.backward(engine(x).float().square().mean())
        engine.step()
        ema.update()
        weights = reference_full(engine.module)
        for d in DECAYS:
            for n, w in weights.items():
                reference[d][n].lerp_(w, 1.0 - d)
    where = f"ZeRO-{stage} {precision} ({type(engine.optimizer).__name__})"
    main = engine.global_rank == 0
    layout = ema.layout
    layout.link_optimizer_state()
    # chunk=5: several gathers per group, cutting parameters between chunks.
    gathered = layout.gather(layout.shares(), chunk=5)
    assert bool(gathered) == main, f"{where}: the full weights belong on rank 0 only"
    for n, w in reference_full(engine.module).items():
        assert not main or torch.equal(gathered[n], w), f"{where}: gathered master of {n} differs"
    for key in ("exp_avg", "exp_avg_sq"):
        moments = layout.gather(layout.moment_shares(key), chunk=5)
        for n, m in reference_full(engine.module, key).items():
            assert not main or torch.equal(moments[n], m), f"{where}: gathered {key} of {n} differs"
    assert layout.step_count() == 3.0, f"{where}: AdamW step count {layout.step_count()}"
    for d in DECAYS:
        averages = ema.state_dict(d)
        for n, r in reference[d].items():
            assert not main or (averages[n].dtype == torch.float32 and torch.equal(averages[n], r)), \
                f"{where}: EMA {d} of {n}"
        full = broadcast_object(averages)  # a checkpoint file that every rank reads
        ema.load_state_dict(d, {n: t + 1 for n, t in full.items()})  # every parameter's shares move
        reloaded = ema.state_dict(d)
        for n, t in full.items():
            assert not main or torch.equal(reloaded[n], t + 1), f"{where}: EMA {d} of {n} after a reload"
    engine.destroy()  # ZeRO-3's hooks and threads, before the next engine and the group's teardown
    print(f"ok {where}", flush=True)


def main() -> int:
    init_distributed("gloo")
    try:
        for stage, precision in SETTINGS:
            check(stage, precision)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
