"""One rank of tests/training/test_training_ssm_precision.py: DeepSpeed ZeRO-2 on gloo, two steps
of the tiny model, then the values the scan receives against the gathered fp32 master weights."""

import json
import sys

import torch

import lamamba.models.ss2d as ss2d
from lamamba.config import load_config
from lamamba.models import build_model
from lamamba.training.config import TrainConfig
from lamamba.training.distributed import init_distributed, shutdown
from lamamba.training.engine import build_engine, plan_batches
from lamamba.training.master_weights import MasterLayout

precision = sys.argv[1]
cfg = load_config(TrainConfig, None, ["model.preset=tiny", "model.input_size=8", "global_batch=4",
                                      "engine.zero_stage=2", f"engine.precision={precision}", "optim.lr=1e-2"])
world = init_distributed("gloo", "cpu")
torch.manual_seed(0)
engine = build_engine(build_model(cfg.model), cfg, plan_batches(4, world.world_size))
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
seen = []
real = ss2d.selective_scan


def recording(u, delta, A, B, C, D=None, delta_bias=None, **kwargs):
    seen.append((A.detach().clone(), D.detach().clone(), delta_bias.detach().clone()))
    return real(u, delta, A, B, C, D, delta_bias, **kwargs)


ss2d.selective_scan = recording
g = torch.Generator().manual_seed(world.rank)
x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g), torch.randint(0, 10, (2,), generator=g)
for _ in range(2):
    engine.backward(engine(x.to(dtype), t, y).float().square().mean())
    engine.step()
seen.clear()
with torch.no_grad():
    engine(x.to(dtype), t, y)
layout = MasterLayout(engine)
master = layout.gather(layout.shares())
blocks = [n[: -len("A_logs")] for n in master if n.endswith("A_logs")]
worst = 0.0
for prefix, (A, D, bias) in zip(blocks, seen):  # blocks in forward order = parameter order
    for got, want in ((A, -torch.exp(master[prefix + "A_logs"])), (D, master[prefix + "Ds"]),
                      (bias, master[prefix + "dt_projs_bias"].flatten())):
        worst = max(worst, float(((got - want).abs() / want.abs().clamp(min=1e-6)).max()))
if world.rank == 0:
    print("RESULT " + json.dumps({"blocks": len(seen), "param_dtype": str(next(engine.module.parameters()).dtype),
                                  "max_rel_error": worst}), flush=True)
shutdown()
