"""Run a scaling experiment: train a list of runs (preset x resolution x backbone), evaluate them,
and collect FLOPs, images/s, peak memory and FIDs into one table and plots.

  lamamba scaling-sweep CONFIG.yaml submit [--dry-run] [key=value ...]
  lamamba scaling-sweep CONFIG.yaml evaluate [key=value ...]
  lamamba scaling-sweep CONFIG.yaml collect [key=value ...]

CONFIG (configs/scaling/) lists `runs`, each {name, config (a training YAML), preset, resolution,
overrides, warm_start, guided_channels}; `submit` holds the options of `lamamba submit` (backend,
nodes, gpus_per_node, runs_root, options: partition / time / setup / address / image ...);
`evaluate` is an evaluation sweep (see `lamamba evaluate-sweep --help`) applied to every run.

submit    submits each run with the launcher as run id NAME under runs_root; finished or active runs
          are left alone; a run with warm_start=OTHER waits until OTHER has committed its last step,
          then starts from OTHER's EMA weights at its own resolution (init_from: the positional
          embedding is interpolated). Submit again to start the runs that were waiting.
evaluate  runs the evaluation sweep over each run's committed checkpoints into RUN_DIR/eval/NAME/
          (resumable; its sample.launcher fans it out on Ray or torchrun like `lamamba sample`).
collect   writes RUN_DIR/results.csv / .json (the sweep table plus images_per_s and peak_memory_gib
          from each run's metrics.jsonl; runs not evaluated yet get one row with their GFLOPs) and
          RUN_DIR/plots/ (FID vs step, vs guidance scale, and the FID-vs-GFLOPs bubble chart).

Example (the paper's comparison at 256 px, then 512 px warm-started from 256):
  lamamba scaling-sweep configs/scaling/paper_comparison.yaml submit --dry-run
"""

from __future__ import annotations

from launcher.commands.sample import config_and_overrides

HELP = "train, evaluate and tabulate a list of runs (preset x resolution x backbone) for scaling plots"


def add_arguments(parser) -> None:
    parser.add_argument("config", help="scaling sweep YAML (configs/scaling/)")
    parser.add_argument("action", choices=("submit", "evaluate", "collect"), help="what to do (see above)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--dry-run", action="store_true", help="submit: print each run's launch artifact only")


def run(args) -> int:
    import logging

    from launcher import scaling

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cfg = scaling.load_scaling_config(*config_and_overrides(args, {}))
    if args.action == "submit":
        lines = scaling.submit(cfg, dry_run=args.dry_run)
    elif args.action == "evaluate":
        lines = scaling.evaluate_runs(cfg)
    else:
        lines = [f"written: {url}" for url in scaling.collect(cfg).values()]
    print("\n".join(lines))
    return 0
