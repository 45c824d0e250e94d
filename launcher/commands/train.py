"""Train a LaMamba-Diff model with DeepSpeed on pre-encoded latents.

  lamamba train CONFIG.yaml [key=value ...]

CONFIG is a training config (configs/train/*.yaml); each key=value overrides one dotted field,
e.g. `run_dir=runs/s256 engine.zero_stage=3 optim.lr=2e-4 engine.activation_checkpointing=all`.

Launch one process per device; rank and world size come from the environment:

  torchrun --nproc_per_node 8 -m launcher.cli train configs/train/xl_256.yaml run_dir=...
  torchrun --nnodes 4 --node_rank $R --master_addr $HEAD --nproc_per_node 8 -m launcher.cli train ...
  deepspeed --no_local_rank --num_gpus 8 --module launcher.cli train configs/train/xl_256.yaml ...
  lamamba train CONFIG                  (a single process)

The run writes <run_dir>/train.log, config.yaml, config_hash, metrics.jsonl, TensorBoard events
in <run_dir>/tb/ and checkpoints in <run_dir>/checkpoints/step_XXXXXXXX/ (or checkpoint.dir, which
may be s3://...). Relaunching the same command resumes from the newest committed checkpoint with
the same data order; it may use a different number of ranks if the global batch is unchanged.
SIGTERM or SIGUSR1 to any rank (or preemption.time_budget_s) checkpoints and exits 0.
Exit codes: 0 done or preempted, 1 a GPU was expected and CUDA is unusable (the line says why),
2 config error, 3 stopped by the numerics guard, 4 a checkpoint problem (another writer holds the
checkpoint directory, a checkpoint file that is not plain data, uploads failing for longer than
checkpoint.upload_budget_s).
"""

from __future__ import annotations

HELP = "train a model with DeepSpeed (ZeRO 1/2/3, bf16, EMA, exact resume)"


def add_arguments(parser) -> None:
    parser.add_argument("config", help="training config YAML (see configs/train/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def run(args) -> int:
    import sys

    from lamamba.config import load_config
    from lamamba.devices import GPUUnavailableError
    from lamamba.training.checkpointer import CheckpointError
    from lamamba.training.config import TrainConfig
    from lamamba.training.lease import LeaseHeldError
    from lamamba.training.numerics import NonFiniteError
    from lamamba.training.safe_load import UnsafeCheckpointError
    from lamamba.training.trainer import train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    try:
        return train(cfg)
    except GPUUnavailableError as err:
        print(f"lamamba train: {err}", flush=True, file=sys.stderr)
        return 1
    except NonFiniteError as err:
        print(f"lamamba train: {err}", flush=True, file=sys.stderr)
        return 3
    except (CheckpointError, LeaseHeldError, UnsafeCheckpointError) as err:
        print(f"lamamba train: {err}", flush=True, file=sys.stderr)
        return 4
