"""Evaluate a sample set with the ADM evaluator's definitions: FID, sFID, IS, precision, recall.

  lamamba evaluate [CONFIG.yaml] --samples URL --reference REF.npz --inception-weights FILE
                   [--out metrics.json] [key=value ...]

URL is a sample set written by `lamamba sample` (local or s3://; features stored with it are
reused when they come from the same network) or one ADM-style .npz with arr_0. REF.npz is ADM's
reference batch (VIRTUAL_imagenet256_labeled.npz, ..._512_...): FID/sFID against its stored
mu/sigma and mu_s/sigma_s, precision/recall against its images' pool_3 features. FILE is the
local pt_inception-2015-12-05-6726825d.pth (nothing is downloaded). The metrics and the protocol
card (sample metadata, reference, network hash, metric definitions) are printed and written to
--out (default <run_dir>/metrics.json).

Building a reference where none is published (1024 px):
  lamamba evaluate --build-reference /data/imagenet/train --resolution 1024 \\
      --reference in1024_ref.npz --inception-weights FILE [--samples URL]
reads an image folder, .npz shards (arr_0) or webdataset .tar shards of images, ADM-centre-crops
them to the resolution and writes mu, sigma, mu_s, sigma_s and pool_features (arr_0 only with
build_reference.include_images=true). It is built only if REF.npz does not exist yet.

Other keys: is_split_size (5000), pr_k (3), pr_batch_size (10000), pr_distances (adm_float16 = ADM's
float16 distance blocks, default; float32), batch_size, extractor.device,
extractor.kind=package.module:factory for another feature network (the quickstart's digits).
"""

from __future__ import annotations

from launcher.commands.sample import config_and_overrides

HELP = "compute FID, sFID, IS, precision and recall of a sample set (ADM evaluator definitions)"

FLAGS = {
    "samples": "samples",
    "reference": "reference",
    "inception_weights": "extractor.weights",
    "out": "out",
    "build_reference": "build_reference.source",
    "resolution": "build_reference.resolution",
}


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="evaluate config YAML; defaults if omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--samples", help="sample set directory/URL, or one .npz with arr_0")
    parser.add_argument("--reference", help="reference batch .npz (ADM's, or one built with --build-reference)")
    parser.add_argument("--inception-weights", help="local path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", help="metrics JSON (default <run_dir>/metrics.json)")
    parser.add_argument("--build-reference", metavar="SOURCE", help="real images to build --reference from")
    parser.add_argument("--resolution", type=int, help="side of the built reference's images")


def run(args) -> int:
    import json

    from lamamba.config import ConfigError, load_config
    from lamamba.evaluation.config import EvalConfig, write_run_files
    from lamamba.evaluation.evaluator import evaluate
    from lamamba.evaluation.inception import InceptionWeightsError
    from lamamba.evaluation.shards import SampleSetError

    cfg = load_config(EvalConfig, *config_and_overrides(args, FLAGS))
    write_run_files(cfg)
    try:
        result = evaluate(cfg)
    except ConfigError:
        raise  # the CLI reports it (exit 2)
    except SampleSetError as err:  # a missing, unfinished or damaged shard, named
        import sys

        print(f"lamamba evaluate: {err}", file=sys.stderr)
        return 2
    except (InceptionWeightsError, FileNotFoundError, ValueError) as err:
        import sys

        print(f"lamamba evaluate: {err}", file=sys.stderr)
        return 1
    if "metrics" not in result:
        print(f"lamamba evaluate: reference written to {result['reference']}")
        return 0
    for name, value in result["metrics"].items():
        print(f"{name:>16}: {'n/a' if value is None else f'{value:.4f}'}")
    print(json.dumps(result["protocol"], indent=2))
    print(f"lamamba evaluate: written to {result['written_to']}")
    return 0
