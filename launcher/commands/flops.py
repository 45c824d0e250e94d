"""Parameters and GFLOPs of a LaMamba-Diff or DiT preset, in the paper's convention.

One multiply-add = one FLOP for Linear / matmul / einsum / conv; LayerNorm 5 per element (4 without
affine parameters); a selective scan 9*B*L*D*N + B*D*L; everything else free. Counted for batch 1
with the timestep and label inputs on the meta device (instant, no memory). DiT's attention
matmuls are counted as LaMamba-Diff's are (DiT-XL/2: 118.7 / 524.8 / 2910 GFLOPs at 256 / 512 / 1024 px).

Examples:
  lamamba flops --preset XL --resolution 256
  lamamba flops --preset XL-release --resolution 512 --json
  lamamba flops --preset S --set attention=none --set scan=raster
  lamamba flops --preset DiT-XL/2 --resolution 1024
  lamamba flops --table          # every preset at 256 px beside the paper's figures
"""

from __future__ import annotations

import argparse
import json

HELP = "parameters and GFLOPs of a model preset (the paper's FLOP convention)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="XL",
                        help="tiny, S, B, L, XL or XL-release (LaMamba-Diff), DiT-S/2 ... DiT-XL/8 (DiT) (default XL)")
    parser.add_argument("--resolution", type=int, default=256,
                        help="image side in pixels; the latent side is resolution / --downsample (default 256)")
    parser.add_argument("--downsample", type=int, default=8, help="autoencoder downsampling factor (default 8)")
    parser.add_argument("--in-channels", type=int, default=4, help="latent channels (default 4)")
    parser.add_argument("--num-classes", type=int, default=1000, help="class labels (default 1000)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field (repeatable), e.g. --set attention=none")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object {preset, resolution, params, gflops}")
    parser.add_argument("--table", action="store_true",
                        help="all presets at 256 px beside the papers' parameters and GFLOPs")


def run(args: argparse.Namespace) -> int:
    from lamamba.config import ConfigError, from_dict, apply_overrides
    from lamamba.models.config import PAPER_FIGURES, ModelConfig
    from lamamba.models.flops import count_flops

    def config(preset: str, resolution: int) -> ModelConfig:
        if resolution % args.downsample:
            raise ConfigError(f"--resolution {resolution} is not divisible by --downsample {args.downsample}")
        base = {"preset": preset, "input_size": resolution // args.downsample,
                "in_channels": args.in_channels, "num_classes": args.num_classes}
        return from_dict(ModelConfig, apply_overrides(base, args.set))

    if args.table:
        rows = []
        for preset, paper in PAPER_FIGURES.items():
            counted = count_flops(config(preset, 256))
            rows.append({"preset": preset, "resolution": 256, "params": counted["params"],
                         "gflops": counted["gflops"], "paper_params_m": paper["params_m"],
                         "paper_gflops": paper.get("table1_gflops", paper["gflops"][256])})
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'preset':<11} {'params (M)':>10} {'paper':>7} {'diff':>7}   {'GFLOPs':>8} {'paper':>7} {'diff':>7}")
        for r in rows:
            dp = 100 * (r["params"] / 1e6 / r["paper_params_m"] - 1)
            dg = 100 * (r["gflops"] / r["paper_gflops"] - 1)
            print(f"{r['preset']:<11} {r['params'] / 1e6:>10.2f} {r['paper_params_m']:>7} {dp:>+6.1f}%   "
                  f"{r['gflops']:>8.2f} {r['paper_gflops']:>7} {dg:>+6.2f}%")
        print("paper: LaMamba-Diff Table 1 (XL-release: the released configuration, d_state 1), DiT Table 4; "
              "256 px, batch 1")
        return 0

    counted = count_flops(config(args.preset, args.resolution))
    result = {"preset": args.preset, "resolution": args.resolution, "params": counted["params"],
              "gflops": round(counted["gflops"], 4)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} at {args.resolution} px: {counted['params'] / 1e6:.2f}M parameters, "
              f"{counted['gflops']:.2f} GFLOPs")
    return 0
