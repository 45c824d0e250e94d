"""The evaluation sweep job: checkpoints x guidance scales x samplers -> one results table + plots.

Every point is one sample set made by the sample job (``run_sampling``: fixed shards with
done-markers, fanned out over Ray actors, torchrun ranks or one process as ``sample.launcher``
says) and scored by the evaluator with ONE feature extractor and ONE loaded reference shared by all
points. Layout under ``run_dir``::

    points/<label>/<point>/samples/     the point's sample set (shards, metadata.json)
    points/<label>/<point>/metrics.json the evaluator's output for it
    points/<label>/<point>/wall.json    seconds spent sampling and evaluating it, over all attempts
    results.csv, results.json           one row per point (lamamba.experiments.results)
    plots/*.png                         FID vs step, vs guidance scale, vs GFLOPs
    tb/                                 the same numbers as TensorBoard scalars

A killed sweep rerun with the same config computes only the shards without a done-marker and
evaluates only the points without metrics (or whose samples changed); finished points are read back.
Under torchrun every rank samples its share of each point, then rank 0 evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass

from lamamba import storage
from lamamba.config import ConfigError, from_dict
from lamamba.evaluation.evaluator import evaluate
from lamamba.evaluation.features import build_extractor
from lamamba.evaluation.reference import load_reference
from lamamba.evaluation.sampler import resolve_launcher, run_sampling
from lamamba.evaluation.shards import METADATA, read_json, write_json
from lamamba.experiments.config import EvalSweepConfig, SweepSampler
from lamamba.experiments.plots import write_plots
from lamamba.experiments.results import ResultRow, write_table, write_tensorboard
from lamamba.models.config import ModelConfig
from lamamba.models.flops import count_flops
from lamamba.training.checkpointer import scan_checkpoints, step_dir_name

log = logging.getLogger("lamamba.experiments")
_STEP = re.compile(r"step_(\d{8})")


@dataclass(frozen=True)
class Point:
    """One (checkpoint, guidance scale, sampler) of the sweep."""

    label: str
    checkpoint: str
    step: int | None
    scale: float
    sampler: SweepSampler

    @property
    def name(self) -> str:
        where = f"step{self.step:08d}" if self.step is not None else re.sub(r"[^A-Za-z0-9._-]", "_",
                                                                           os.path.basename(self.checkpoint))
        return f"{where}_cfg{self.scale:g}_{self.sampler.name}"


def committed_checkpoints(train_run: str) -> dict[int, str]:
    """{step: checkpoint dir} of the committed checkpoints of a run dir (or its checkpoints dir)."""
    for root in (storage.join(train_run, "checkpoints"), train_run):
        scan = scan_checkpoints(root)
        if scan.complete:
            return {step: storage.join(root, step_dir_name(step)) for step in scan.complete}
    return {}


def run_label(cfg: EvalSweepConfig) -> str:
    """The run's name in the table: ``label``, else the training run's directory name."""
    if cfg.label:
        return cfg.label
    parts = [p for p in cfg.train_run.rstrip("/").split("/") if p and p != "checkpoints"]
    return parts[-1] if parts else "run"


def sweep_points(cfg: EvalSweepConfig) -> list[Point]:
    """Every point of ``cfg``, checkpoints in step order."""
    checkpoints: list[tuple[int | None, str]] = []
    if cfg.train_run:
        found = committed_checkpoints(cfg.train_run)
        missing = sorted(set(cfg.steps) - set(found))
        if missing:
            raise ConfigError(f"steps: {missing} are not committed checkpoints of {cfg.train_run} "
                              f"(committed: {sorted(found)})")
        checkpoints += [(s, found[s]) for s in sorted(found) if not cfg.steps or s in cfg.steps]
    for url in cfg.checkpoints:
        match = _STEP.findall(url)
        checkpoints.append((int(match[-1]) if match else None, url))
    if not checkpoints and not cfg.train_run:
        raise ConfigError("train_run / checkpoints: give a training run or a list of checkpoints")
    label = run_label(cfg)
    return [Point(label, url, step, scale, sampler) for step, url in checkpoints
            for scale in cfg.guidance_scales for sampler in cfg.samplers]


def point_dir(cfg: EvalSweepConfig, point: Point) -> str:
    return storage.join(cfg.run_dir, "points", point.label, point.name)


def point_sample_config(cfg: EvalSweepConfig, point: Point):
    """The sample job's config of one point: the sweep's base with this point's settings."""
    return dataclasses.replace(cfg.sample, run_dir=point_dir(cfg, point), checkpoint=point.checkpoint,
                               out=storage.join(point_dir(cfg, point), "samples"), cfg_scale=point.scale,
                               sampler=point.sampler.sampler, steps=point.sampler.steps, eta=point.sampler.eta)


def _add_wall(cfg: EvalSweepConfig, point: Point, key: str, seconds: float) -> None:
    url = storage.join(point_dir(cfg, point), "wall.json")
    wall = read_json(url) if storage.exists(url) else {}
    wall[key] = wall.get(key, 0.0) + seconds
    write_json(url, wall)


def _torchrun_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def sample_points(cfg: EvalSweepConfig, points: list[Point]) -> dict[str, list[int]]:
    """Phase 1 (every rank): each point's missing shards; returns {point: shards computed here}."""
    from lamamba.ray_runtime import ray_session

    computed = {}
    launcher = resolve_launcher(cfg.sample.launcher)
    rank, _ = _torchrun_world()
    # One Ray for the whole sweep (each point's actors load that point's checkpoint).
    with ray_session(cfg.sample.ray.address) if launcher == "ray" else contextlib.nullcontext():
        for i, point in enumerate(points):
            log.info("[%d/%d] sampling %s %s", i + 1, len(points), point.label, point.name)
            start = time.perf_counter()
            computed[point.name] = run_sampling(point_sample_config(cfg, point))
            if rank == 0:
                _add_wall(cfg, point, "sample_s", time.perf_counter() - start)
    return computed


def evaluate_points(cfg: EvalSweepConfig, points: list[Point], computed: dict[str, list[int]]
                    ) -> tuple[list[ResultRow], list[ResultRow]]:
    """Phase 2 (one process): metrics of every point with one extractor and one reference; returns
    (every row, the rows evaluated by this call)."""
    extractor = build_extractor(cfg.evaluate.extractor)
    base = dataclasses.replace(cfg.evaluate, run_dir=cfg.run_dir, samples="")
    evaluate(base, extractor)  # builds the reference first if it is to be built
    reference = load_reference(cfg.evaluate.reference, extractor, cfg.evaluate.batch_size)
    rows, fresh, flops = [], [], {}
    for i, point in enumerate(points):
        where = point_dir(cfg, point)
        metrics_url = storage.join(where, "metrics.json")
        reuse = storage.exists(metrics_url) and not computed.get(point.name)
        if reuse:
            result = read_json(metrics_url)
        else:
            log.info("[%d/%d] evaluating %s %s", i + 1, len(points), point.label, point.name)
            start = time.perf_counter()
            point_cfg = dataclasses.replace(cfg.evaluate, run_dir=where, samples=storage.join(where, "samples"),
                                            out=metrics_url)
            result = evaluate(point_cfg, extractor, reference)
            _add_wall(cfg, point, "evaluate_s", time.perf_counter() - start)
        if point.checkpoint not in flops:
            proto = read_json(storage.join(where, "samples", METADATA))["protocol"]
            flops[point.checkpoint] = count_flops(from_dict(ModelConfig, proto["model"]))
        wall = read_json(storage.join(where, "wall.json"))
        rows.append(ResultRow(
            label=point.label, checkpoint=point.checkpoint, step=point.step, guidance_scale=point.scale,
            sampler=point.sampler.name, n=int(result["protocol"]["num_samples"]),
            **{k: result["metrics"].get(k) for k in ("fid", "sfid", "inception_score", "precision", "recall")},
            gflops=round(flops[point.checkpoint]["gflops"], 6), params=flops[point.checkpoint]["params"],
            wall_s=round(sum(wall.values()), 3)))
        if not reuse:
            fresh.append(rows[-1])
    return rows, fresh


def publish(rows: list[ResultRow], run_dir: str, tensorboard_rows: list[ResultRow] | None = None) -> dict[str, str]:
    """Write the table and the plots of ``rows``, and ``tensorboard_rows`` (the new ones) as
    TensorBoard scalars under ``<run_dir>/tb`` (local run dirs); returns what was written."""
    csv_url, json_url = write_table(rows, run_dir)
    written = {"csv": csv_url, "json": json_url, **write_plots(rows, storage.join(run_dir, "plots"))}
    if tensorboard_rows:
        tb = os.path.join(run_dir, "tb")
        write_tensorboard(tensorboard_rows, tb)
        written["tensorboard"] = tb
    return written


def run_eval_sweep(cfg: EvalSweepConfig) -> dict:
    """Sample and evaluate every point of ``cfg`` that is not finished; returns {"computed": {point:
    shards sampled by this process}, "rows": [...], "written": {...}} (rank 0; other ranks only sample)."""
    import torch.distributed as dist

    points = sweep_points(cfg)
    rank, world = _torchrun_world()
    distributed = resolve_launcher(cfg.sample.launcher) == "torchrun" and world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        computed = sample_points(cfg, points)
        if distributed:  # every rank's shards are done before rank 0 reads them
            computed = _merge_computed(computed)
        if rank != 0:
            return {"computed": computed, "rows": [], "written": {}}
        rows, fresh = evaluate_points(cfg, points, computed)
        written = publish(rows, cfg.run_dir, fresh if cfg.tensorboard else None)
        return {"computed": computed, "rows": rows, "written": written}
    finally:
        if distributed:
            dist.destroy_process_group()


def _merge_computed(computed: dict[str, list[int]]) -> dict[str, list[int]]:
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, computed)  # also the barrier
    return {name: sorted(s for part in gathered for s in part.get(name, [])) for name in computed}


def watch(cfg: EvalSweepConfig, max_rounds: int | None = None) -> dict:
    """The side-job form: evaluate new committed checkpoints of ``train_run`` as they appear, every
    ``poll_s`` seconds, until step ``train_until_step`` (default the run's max_steps) is evaluated."""
    if not cfg.train_run:
        raise ConfigError("train_run: --watch follows a training run")
    until = cfg.train_until_step or _max_steps(cfg.train_run)
    rounds = 0
    while True:
        found = committed_checkpoints(cfg.train_run)
        result = run_eval_sweep(cfg) if found else {"computed": {}, "rows": [], "written": {}}
        rounds += 1
        if (found and max(found) >= until) or (max_rounds is not None and rounds >= max_rounds):
            return result
        log.info("newest committed step %s < %d: next look in %.0f s", max(found) if found else None, until,
                 cfg.poll_s)
        time.sleep(cfg.poll_s)


def _max_steps(train_run: str) -> int:
    import yaml

    url = storage.join(train_run, "config.yaml")
    if not storage.exists(url):
        raise ConfigError(f"train_until_step: {train_run} has no config.yaml to read max_steps from; set it")
    return int((yaml.safe_load(storage.read_bytes(url)) or {})["max_steps"])


def describe(result: dict) -> str:
    """A short summary for the command line."""
    lines = [f"{name}: computed shards {shards or 'none'}" for name, shards in result["computed"].items()]
    for row in result["rows"]:
        fid = "n/a" if row.fid is None else f"{row.fid:.4f}"
        lines.append(f"{row.label} step {row.step} cfg {row.guidance_scale:g} {row.sampler}: FID {fid} "
                     f"({row.n} samples, {row.gflops:.3g} GFLOPs, {row.wall_s:.1f} s)")
    lines += [f"written: {url}" for url in result["written"].values()]
    return "\n".join(lines)
