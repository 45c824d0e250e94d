"""Run the whole system end to end on real data, on the CPU, in under fifteen minutes.

scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes, shipped with the
package, so nothing is downloaded) go through the real code path of every stage:

  1. classifier  train a small CNN on the real digits (held-out accuracy reported); it stands in
                 for Inception, whose weights cannot be fetched offline
  2. encode      the Ray encoding job writes the digits as pixel-space latents (identity
                 autoencoder) to webdataset shards under OUT/shards
  3. train       a small LaMamba-Diff trained with DeepSpeed on the CPU (`lamamba train` under
                 torchrun), checkpoints and TensorBoard logs under OUT/train
  4. sample      class-balanced samples from the EMA weights, with classifier-free guidance,
                 on two Ray workers
  5. evaluate    FID and precision/recall on the classifier's features against the real digits,
                 and the share of samples the classifier reads as their conditioning class
  6. report      the sample grid, the metrics JSON and the final figures in TensorBoard

Outputs: OUT/samples.png (one row per class; green frame = recognised as its class),
OUT/metrics.json, TensorBoard logs under OUT (`tensorboard --logdir OUT`).

The settings live in launcher/quickstart/digits.yaml (installed with the package); override any of them with key=value, e.g.
`lamamba quickstart train.max_steps=2000 sample.cfg_scale=2`. Rerunning with the same --out resumes: finished shards,
checkpoints and sample shards are reused (use a new --out to start over).
"""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline end to end on real handwritten digits, CPU only (< 15 min)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart",
                        help="directory for every output (default: runs/quickstart)")
    parser.add_argument("--config", default=None,
                        help="quickstart YAML (default: launcher/quickstart/digits.yaml, shipped in the package)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the config, e.g. train.max_steps=2000 sample.cfg_scale=2")


def run(args: argparse.Namespace) -> int:
    from launcher.quickstart import load_quickstart_config, run_quickstart

    cfg = load_quickstart_config(args.config, [*args.overrides, f"run_dir={args.out}"])
    run_quickstart(cfg)
    return 0
