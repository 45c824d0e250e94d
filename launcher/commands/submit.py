"""Submit a job (encode, train, sample, evaluate) to run here, on SLURM, on a Ray cluster or on KubeRay.

The config is validated first (unknown keys and wrong types are errors naming the key). The run
id is then fixed once, at submission: <job>-<config file stem>-<hash of the settings>, or
--run-id. The run directory <runs-root>/<run id> is passed to the job as run_dir=...; the
resolved config and its hash are saved in <run dir>/launch/ with the rendered launch artifact
and the backend's handle, which `lamamba status|logs|cancel RUN_ID` use.

Submitting the same command again names the same run: the job continues in the same run dir
(training resumes from its newest committed checkpoint; encode and sample skip finished shards).
So does the same command with changes that do not change the run: training's max_steps, log,
checkpoint and sample-grid cadences, workers, micro-batch, activation checkpointing; any job's
storage options and credentials. Changing what makes the run (training: model, data, global
batch, seed, optimiser, diffusion, EMA, precision; encode: source, resolution, autoencoder,
shard size, output; sample: the sampling protocol) is refused with the keys named, since the
same config file already made a run with other values: restore them to continue that run, or
pass --new-run to start another beside it. A run that is still pending or running is not
submitted twice.

Credentials in the config (any storage_options key or secret) are never written to the run dir,
a log or the status output, and never feed the run id (rotating a key keeps the run): the local
and SLURM backends pass them to the job's processes in their environment; for ray and kuberay
put them in the cluster's environment (--secret) instead.

Backends:
  local    this machine, in the background; training under torchrun with --gpus-per-node
           ranks (CPU ranks where there is no GPU); output in <run dir>/logs/local.log.
  slurm    an sbatch script (cluster/slurm/job.sbatch.j2): one srun task per node, torchrun with
           the rendezvous host from the node list and a port from the job id; requeued before the
           time limit (--signal=B:USR1@120 --requeue) unless the run finished.
  ray      a Ray job on the cluster at --address (the job server, http://HEAD:8265); training
           places one torchrun per node; a failed attempt restarts up to --max-restarts times.
  kuberay  a RayJob manifest (cluster/kuberay/rayjob.yaml.j2) created with kubectl.

--dry-run prints the artifact (command, sbatch script, Ray job request, RayJob manifest) and
submits nothing.

Examples:
  lamamba submit train configs/train/tiny_digits.yaml data.manifest=runs/encode-digits/latents \\
      --backend local --gpus-per-node 2 --follow
  lamamba submit train configs/train/xl_256.yaml --backend slurm --nodes 4 --gpus-per-node 8 \\
      --partition gpu --time 48:00:00 --setup "source .venv/bin/activate"
  lamamba submit sample configs/sample/imagenet_256.yaml checkpoint=runs/x/export.safetensors \\
      --backend ray --address http://head:8265
  lamamba submit train configs/train/xl_256.yaml --backend kuberay --nodes 4 --gpus-per-node 8 \\
      --image ghcr.io/me/lamamba:0.1 --runs-root s3://bucket/runs --dry-run
"""

from __future__ import annotations

import argparse
import sys

from launcher.backends import BACKENDS
from launcher.jobs import JOBS

HELP = "submit a job to run locally, on SLURM, on a Ray cluster or on KubeRay"

# Restarts after a failure, by backend: SLURM requeues instead; locally a failure is shown to you.
DEFAULT_MAX_RESTARTS = {"local": 0, "slurm": 0, "ray": 2, "kuberay": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", choices=list(JOBS), help="the job to run")
    parser.add_argument("config", help="the job's YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of config values, e.g. optim.lr=2e-4")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="where to run (default: local)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (training; Ray/KubeRay worker nodes)")
    parser.add_argument("--gpus-per-node", type=int, default=1,
                        help="GPUs per node = training ranks per node (CPU ranks without GPUs)")
    parser.add_argument("--cpu", action="store_true",
                        help="CPU ranks: ask the scheduler for no GPUs (--gpus-per-node then counts ranks)")
    parser.add_argument("--max-restarts", type=int, default=None,
                        help="restarts after a failure (default: 2 on ray/kuberay, else 0)")
    parser.add_argument("--runs-root", default=None,
                        help="where run dirs are made (default: $LAMAMBA_RUNS_ROOT or ./runs); a path or s3:// URL")
    parser.add_argument("--run-id", default=None, help="name the run instead of deriving it from the config")
    parser.add_argument("--new-run", action="store_true",
                        help="start a new run although the same config file made one with other settings "
                             "(model, data, batch, seed, optimiser, ...) instead of refusing")
    parser.add_argument("--python", default=None,
                        help="interpreter on the compute side (default: this one; `python` on ray/kuberay)")
    parser.add_argument("--template", help="a site-specific copy of the sbatch or RayJob template (Jinja2)")
    parser.add_argument("--dry-run", action="store_true", help="print the launch artifact, submit nothing")
    parser.add_argument("--follow", action="store_true",
                        help="after submitting, print the log until the run ends; exit 0 only if it succeeded")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--time", help="time limit, e.g. 48:00:00 (the job requeues itself before it)")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--cpus-per-node", type=int, default=None,
                       help="CPUs per node (slurm --cpus-per-task, kuberay worker CPUs; default 8 per GPU)")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="an extra #SBATCH line, e.g. --sbatch-arg=--exclusive (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before the job, e.g. 'source .venv/bin/activate' (repeatable)")
    ray = parser.add_argument_group("ray")
    ray.add_argument("--address", help="Ray job server, http://HEAD:8265 (default: $RAY_ADDRESS)")
    ray.add_argument("--working-dir", help="upload this directory as the job's code (runtime_env working_dir)")
    kuberay = parser.add_argument_group("kuberay")
    kuberay.add_argument("--image", help="container image with lamamba installed (default lamamba:latest)")
    kuberay.add_argument("--namespace", help="Kubernetes namespace (default: default)")
    kuberay.add_argument("--secret", help="a Secret whose keys become env vars (S3 credentials, endpoint)")
    kuberay.add_argument("--memory-per-node", help="worker pod memory (default 32Gi per GPU)")


def run(args: argparse.Namespace) -> int:
    from launcher import launch, runs

    remote_python = args.backend in ("ray", "kuberay")
    submitted = launch.submit_run(
        args.job, args.config, args.overrides, args.backend, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        gpus=not args.cpu,
        max_restarts=DEFAULT_MAX_RESTARTS[args.backend] if args.max_restarts is None else args.max_restarts,
        python=args.python or ("python" if remote_python else sys.executable), runs_root=args.runs_root,
        run_id=args.run_id, dry_run=args.dry_run, new_run=args.new_run,
        options={"partition": args.partition, "time": args.time, "account": args.account,
                 "cpus_per_task": args.cpus_per_node, "sbatch_args": args.sbatch_arg, "setup": args.setup,
                 "template": args.template, "address": args.address, "working_dir": args.working_dir,
                 "image": args.image, "namespace": args.namespace, "secret": args.secret,
                 "memory": args.memory_per_node})
    if submitted.record is None:
        sys.stdout.write(submitted.artifact)
        return 0
    record = submitted.record
    again = f" (submission {record.submissions}: continuing in the same run dir)" if record.submissions > 1 else ""
    print(f"submitted {record.run_id} to {record.backend}{again}\n  run dir: {record.run_dir}\n"
          f"  follow:  lamamba logs {record.run_id} --follow", flush=True)
    if not args.follow:
        return 0
    state = launch.follow(record)
    print(f"{record.run_id}: {state}")
    return 0 if state == runs.SUCCEEDED else 1
