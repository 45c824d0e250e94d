"""Run under torchrun (2 gloo ranks): for each ZeRO setting, train a small model a few steps and
check MasterLayout and EMA against DeepSpeed's per-parameter ``safe_get_full_fp32_param``.

Exits non-zero (an AssertionError naming the setting and parameter) on any mismatch.
"""

import sys

import torch
from torch import nn

from lamamba.training.distributed import init_distributed, shutdown
from lamamba.training.ema import EMA

SETTINGS = [(1, "bf16"), (1, "fp32"), (2, "bf16"), (3, "bf16")]  # ZeRO-1 bf16 is DeepSpeed's BF16_Optimizer
DECAYS = (0.9, 0.5)


def reference_full(module):
    """The per-parameter collective the EMA replaced: {name: full fp32 master value}."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).detach().float().clone() for n, p in module.named_parameters()}


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
    gathered = ema.layout.gather(ema.layout.shares())
    for n, w in reference_full(engine.module).items():
        assert torch.equal(gathered[n], w), f"{where}: gathered master of {n} differs"
    for d in DECAYS:
        averages = ema.state_dict(d)
        for n, r in reference[d].items():
            assert averages[n].dtype == torch.float32 and torch.equal(averages[n], r), f"{where}: EMA {d} of {n}"
        ema.load_state_dict(d, {n: t + 1 for n, t in averages.items()})  # every parameter's shares move
        reloaded = ema.state_dict(d)
        for n, t in averages.items():
            assert torch.equal(reloaded[n], t + 1), f"{where}: EMA {d} of {n} after a reload"
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
