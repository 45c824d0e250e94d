"""Sample a class-balanced image set from a checkpoint's EMA weights, for evaluation.

  lamamba sample [CONFIG.yaml] --checkpoint CKPT [--num-samples 50000 --cfg-scale 1.5 --steps 250
                 --sampler ddpm|ddim --out URL] [key=value ...]

CKPT is a training checkpoint directory (its ema.safetensors is used) or an exported .safetensors.
Sample i has class i mod num_classes and its own noise generator keyed by (seed, i), so the set
does not depend on the number of workers (docs/protocols.md, *Sample sets*; the batch size changes
only the float rounding). The indices are cut into fixed shards of `shard_size`; each is written to
OUT (local or s3://) as
shard_XXXXX.npz (arr_0: NHWC uint8, ADM's format; plus labels and indices) and/or
shard_XXXXX.features.npz (outputs=features|both), then a shard_XXXXX.done marker. Rerunning the
same command computes only the shards without a marker; OUT/metadata.json records the protocol
(checkpoint sha256, sampler, steps, CFG scale and guided channels, seed, label scheme, precision)
and a rerun with a different protocol is refused.

Fan-out:
  lamamba sample CFG launcher=ray ray.num_workers=8 ray.gpus_per_worker=1     (Ray actors)
  torchrun --nproc_per_node 8 -m launcher.cli sample CFG                      (rank r: shards r, r+8, ...)
  lamamba submit sample CFG --backend ray --address http://head:8265          (a Ray job: Ray actors)

Other keys (configs/sample/imagenet_256.yaml): guided_channels (null = all 4, 3 = DiT), eta,
seed, batch_size, shard_size, precision (fp32|bf16|fp16), autoencoder.kind/path_or_id,
outputs=images|features|both with extractor.weights=pt_inception-2015-12-05-6726825d.pth.
Then: lamamba evaluate --samples OUT --reference REF.npz --inception-weights FILE
"""

from __future__ import annotations

HELP = "sample class-balanced images from a checkpoint for evaluation (local, Ray or torchrun)"

# flag -> config key; each given flag becomes a key=value override
FLAGS = {
    "checkpoint": "checkpoint",
    "num_samples": "num_samples",
    "cfg_scale": "cfg_scale",
    "steps": "steps",
    "sampler": "sampler",
    "out": "out",
    "seed": "seed",
    "batch_size": "batch_size",
    "launcher": "launcher",
    "num_workers": "ray.num_workers",
    "gpus_per_worker": "ray.gpus_per_worker",
}


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="sample config YAML (configs/sample/); defaults if omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--checkpoint", help="training checkpoint dir or exported .safetensors")
    parser.add_argument("--num-samples", type=int, help="number of samples (default 50000)")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default 1.5; 1 = none)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 250)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), help="sampler (default ddpm)")
    parser.add_argument("--out", help="output directory or URL (default <run_dir>/samples)")
    parser.add_argument("--seed", type=int, help="noise seed (default 0)")
    parser.add_argument("--batch-size", type=int, help="images per model batch (default 32)")
    parser.add_argument("--launcher", choices=("auto", "local", "ray", "torchrun"),
                        help="fan-out (default auto: torchrun under torchrun, Ray in a Ray job, else local)")
    parser.add_argument("--num-workers", type=int, help="Ray workers")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray worker")


def config_and_overrides(args, flags: dict[str, str]) -> tuple[str | None, list[str]]:
    """The config path and the overrides: positional key=value ones, then one per given flag
    (a lone key=value in the CONFIG position is an override too)."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            overrides.append(f"{key}={value}")
    return config, overrides


def run(args) -> int:
    import os

    from lamamba.config import ConfigError, load_config
    from lamamba.devices import GPUUnavailableError
    from lamamba.evaluation.config import SampleConfig, write_run_files
    from lamamba.evaluation.sampler import run_sampling

    cfg = load_config(SampleConfig, *config_and_overrides(args, FLAGS))
    if os.environ.get("RANK", "0") == "0":
        write_run_files(cfg)
    try:
        computed = run_sampling(cfg)
    except ConfigError:
        raise  # the CLI reports it (exit 2)
    # e.g. an autoencoder or extractor that cannot load, or a GPU worker without a working CUDA
    except (FileNotFoundError, ValueError, GPUUnavailableError) as err:
        import sys

        print(f"lamamba sample: {err}", file=sys.stderr)
        return 1
    print(f"lamamba sample: computed shards {computed or 'none (all finished)'}; samples in {cfg.out_url}")
    return 0
