"""Export a training checkpoint's EMA weights as a standalone inference file.

  lamamba export CHECKPOINT --out FILE.safetensors [--decay 0.9999]

CHECKPOINT is a checkpoint directory (.../checkpoints/step_00400000), a checkpoints directory or
a run directory (then the newest committed checkpoint is used); local or s3://. A checkpoint
without its COMMITTED marker is refused, and so is one whose EMA file does not match the size and
sha256 its commit recorded. The output holds only the fp32 EMA weights, with the
model config in the safetensors metadata (plus the step, the EMA decay and the training config),
and opens with lamamba.models.io.load_model like the checkpoint's own ema.safetensors.
"""

from __future__ import annotations

HELP = "export a checkpoint's EMA weights (+ config) to one safetensors file"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="checkpoint, checkpoints or run directory (local or s3://)")
    parser.add_argument("--out", required=True, help="output .safetensors path or URL")
    parser.add_argument("--decay", type=float, default=None,
                        help="which EMA to export (default: the run's main decay, ema.safetensors)")


def run(args) -> int:
    import sys

    from lamamba import storage
    from lamamba.models.io import read_model_file, save_model_weights
    from lamamba.training.checkpointer import (CheckpointError, ema_file_name, read_commit, resolve_checkpoint,
                                               verify_files)

    try:
        ckpt = resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as err:
        print(f"lamamba export: {err}", file=sys.stderr)
        return 1
    # The files read must be the ones committed (their sizes and sha256 are in COMMITTED).
    try:
        files = read_commit(ckpt).get("files") or {}
    except CheckpointError as err:
        print(f"lamamba export: {err}", file=sys.stderr)
        return 1
    problems = verify_files(ckpt, {n: r for n, r in files.items() if n.startswith("ema") or n == "config.yaml"})
    if problems:
        print(f"lamamba export: {ckpt} is damaged: {'; '.join(problems)}", file=sys.stderr)
        return 1
    # The main EMA is ema.safetensors; other decays are ema_<decay>.safetensors.
    candidates = ["ema.safetensors"] + ([] if args.decay is None else [ema_file_name(args.decay, main=False)])
    for name in reversed(candidates):
        if not storage.exists(storage.join(ckpt, name)):
            continue
        state_dict, cfg, meta = read_model_file(storage.join(ckpt, name))
        if args.decay is None or float(meta.get("ema_decay", "nan")) == args.decay:
            break
    else:
        print(f"lamamba export: {ckpt} has no EMA with decay {args.decay} (see ema.decays in its config.yaml)",
              file=sys.stderr)
        return 1
    train_config = storage.join(ckpt, "config.yaml")
    if storage.exists(train_config):
        meta["train_config"] = storage.read_bytes(train_config).decode()
    meta["source_checkpoint"] = ckpt
    save_model_weights(args.out, state_dict, cfg, metadata=meta)
    print(f"exported EMA (decay {meta.get('ema_decay', '?')}, step {meta.get('step', '?')}) of {ckpt} -> {args.out}")
    return 0
