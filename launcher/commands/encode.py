"""Pre-encode an image set into VAE latent shards (webdataset tars + manifest) on Ray.

  lamamba encode CONFIG.yaml [key=value ...]

CONFIG is an encode config (configs/encode/*.yaml); each key=value overrides one dotted field,
e.g. `source.path=/data/imagenet/train output=s3://bucket/latents/in256 ray.num_workers=8
ray.gpus_per_worker=1`.

Sources (source.kind): imagenet (train layout, class = sorted synset position), folder (any
class-folder tree), list (a file of `path label` lines), digits (scikit-learn's 8x8 digits,
source.split=train|test|all). Paths may be local or fsspec URLs (s3://...; endpoint and
credentials from AWS_* / LAMAMBA_S3_ENDPOINT or source.storage_options / storage_options).

Images are centre-cropped the ADM way to `resolution`, encoded with their horizontal flip, and
written as shards of `shard_size` images to `output` (default <run_dir>/latents): each shard in one
upload, then <shard>.done.json, then manifest.json last. Rerunning the same command skips finished
shards and redoes only missing, damaged (sha256) or invalid ones; other settings into an output
that holds a data set are refused unless replace=true (which deletes it, manifest first). A storage
outage is retried with backoff until it has lasted retry_budget_s (600 s), then the job stops.
Corrupt images are skipped and listed in the manifest. ray.num_workers=0 encodes in this process
without Ray.

Examples:
  lamamba encode configs/encode/imagenet_256.yaml source.path=/data/imagenet/train
  lamamba encode configs/encode/digits.yaml source.split=train
  lamamba encode configs/encode/tiny_test.yaml source.path=data/images ray.num_workers=0

Exit codes: 0 done, 1 some shards failed (rerun to finish), 2 config or source error.
"""

from __future__ import annotations

import argparse

HELP = "pre-encode images into VAE latent shards (Ray; local or S3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="encode config YAML (see configs/encode/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from data_pipeline import EncodeConfig, EncodeError, run_encode
    from data_pipeline.sources import SourceError
    from lamamba.config import ConfigError, load_config

    cfg = load_config(EncodeConfig, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        summary = run_encode(cfg)
    except SourceError as err:
        raise ConfigError(str(err)) from None
    except EncodeError as err:
        print(f"lamamba encode: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 0
