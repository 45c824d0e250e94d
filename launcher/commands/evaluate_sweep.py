"""Evaluate many checkpoints x guidance scales x samplers in one job: one results table and plots.

  lamamba evaluate-sweep CONFIG.yaml [--watch] [key=value ...]

CONFIG (configs/evaluate_sweep/) names the checkpoints - `train_run` (a training run dir: its
committed checkpoints, or those in `steps`) and/or `checkpoints` (a list of checkpoint dirs or
exported .safetensors) - the `guidance_scales`, the `samplers` ({sampler, steps, eta} each), and
the `sample` and `evaluate` jobs' own settings as the base of every point (num_samples, seed,
guided_channels, autoencoder, launcher / ray, reference, extractor, ...). The reference statistics
and the feature extractor are loaded once and shared by all points.

Each point is sampled like `lamamba sample` (fixed shards with done-markers; Ray actors with
sample.launcher=ray, torchrun ranks under torchrun, else one process) and evaluated like
`lamamba evaluate`. Rerunning the same command after a kill computes only the missing shards and
the missing metrics. Outputs under run_dir: results.csv and results.json (label, checkpoint, step,
guidance_scale, sampler, n, fid, sfid, inception_score, precision, recall, gflops, params, wall_s),
plots/fid_vs_step.png, plots/fid_vs_guidance.png, plots/fid_vs_gflops.png (bubble area = GFLOPs),
tb/ (TensorBoard scalars <label>/<metric>/cfg<scale>/<sampler> at the checkpoint step) and
points/<label>/<point>/ (each point's samples and metrics).

--watch: the side-job form of an FID monitor for a run in progress: re-scan train_run every poll_s
seconds, evaluate each newly committed checkpoint, stop once step train_until_step (default the
run's max_steps) is evaluated. Keep checkpoint.keep_last large enough, or watch, for a sweep over
old steps: the trainer prunes older checkpoints.

Examples:
  lamamba evaluate-sweep configs/evaluate_sweep/imagenet_256.yaml train_run=runs/xl-256 \\
      evaluate.reference=VIRTUAL_imagenet256_labeled.npz evaluate.extractor.weights=pt_inception.pth
  torchrun --nproc_per_node 8 -m launcher.cli evaluate-sweep CONFIG       (ranks share each point's shards)
  lamamba evaluate-sweep CONFIG sample.launcher=ray sample.ray.num_workers=8 sample.ray.gpus_per_worker=1
  lamamba evaluate-sweep CONFIG --watch train_run=runs/xl-256 poll_s=600
"""

from __future__ import annotations

from launcher.commands.sample import config_and_overrides

HELP = "evaluate checkpoints x guidance scales x samplers: results table (CSV/JSON), plots, TensorBoard"

FLAGS = {"train_run": "train_run", "label": "label"}


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="evaluation sweep YAML (configs/evaluate_sweep/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--train-run", help="training run dir whose committed checkpoints are evaluated")
    parser.add_argument("--label", help="the run's name in the table and plots (default: the run dir's name)")
    parser.add_argument("--watch", action="store_true",
                        help="keep evaluating new committed checkpoints of train_run until the run's last step")


def run(args) -> int:
    import logging
    import os

    from lamamba.config import ConfigError, load_config
    from lamamba.evaluation.config import write_run_files
    from lamamba.evaluation.inception import InceptionWeightsError
    from lamamba.experiments.config import EvalSweepConfig
    from lamamba.experiments.eval_sweep import describe, run_eval_sweep, watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(EvalSweepConfig, *config_and_overrides(args, FLAGS))
    if os.environ.get("RANK", "0") == "0":
        write_run_files(cfg)
    try:
        result = watch(cfg) if args.watch else run_eval_sweep(cfg)
    except ConfigError:
        raise  # the CLI reports it (exit 2)
    except (InceptionWeightsError, FileNotFoundError, ValueError) as err:
        import sys

        print(f"lamamba evaluate-sweep: {err}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0
