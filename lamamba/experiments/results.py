"""The results table of the experiment jobs: one row per (run, checkpoint, guidance scale, sampler),
written as ``results.csv`` and ``results.json`` beside each other, and as TensorBoard scalars.

The same rows feed the plots (``lamamba.experiments.plots``), so the figures show the table's
numbers and nothing else. The scaling sweep adds its per-run training figures (images/s, peak
memory) to the rows of the same table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass

from lamamba import storage

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")


@dataclass
class ResultRow:
    """One evaluated point. Metrics the features cannot give are None (empty in the CSV)."""

    label: str  # the run (model) this checkpoint belongs to
    checkpoint: str
    step: int | None  # training step of the checkpoint (None: unknown)
    guidance_scale: float
    sampler: str  # e.g. "ddpm250", "ddim50"
    n: int  # number of samples
    fid: float | None = None
    sfid: float | None = None
    inception_score: float | None = None
    precision: float | None = None
    recall: float | None = None
    gflops: float | None = None  # model forward GFLOPs per image (batch 1, the papers' convention)
    params: int | None = None
    wall_s: float | None = None  # sampling + evaluation wall-clock of this point, over all attempts
    images_per_s: float | None = None  # training throughput of the run (scaling sweeps)
    peak_memory_gib: float | None = None  # training peak memory per device of the run (scaling sweeps)


COLUMNS = tuple(f.name for f in dataclasses.fields(ResultRow))


def write_table(rows: list[ResultRow], run_dir: str) -> tuple[str, str]:
    """``<run_dir>/results.csv`` and ``results.json`` (sorted by label, step, scale, sampler)."""
    rows = sort_rows(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})
    csv_url, json_url = storage.join(run_dir, "results.csv"), storage.join(run_dir, "results.json")
    storage.write_bytes(csv_url, buf.getvalue().encode())
    storage.write_bytes(json_url, (json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n").encode())
    return csv_url, json_url


def read_table(url: str) -> list[ResultRow]:
    """The rows of a ``results.json`` (or ``results.csv``) written by :func:`write_table`."""
    data = storage.read_bytes(url).decode()
    if url.endswith(".json"):
        return [ResultRow(**item) for item in json.loads(data)]
    types = {f.name: f.type for f in dataclasses.fields(ResultRow)}
    rows = []
    for item in csv.DictReader(io.StringIO(data)):
        rows.append(ResultRow(**{k: _parse(types[k], v) for k, v in item.items()}))
    return rows


def _parse(tp: str, text: str):
    if text == "":
        return None
    if tp.startswith("int"):
        return int(text)
    if tp.startswith("float"):
        return float(text)
    return text


def sort_rows(rows: list[ResultRow]) -> list[ResultRow]:
    return sorted(rows, key=lambda r: (r.label, -1 if r.step is None else r.step, r.guidance_scale, r.sampler,
                                       r.checkpoint))


def write_tensorboard(rows: list[ResultRow], log_dir: str) -> None:
    """Every metric of every row as a scalar ``<label>/<metric>/cfg<scale>/<sampler>`` at the
    checkpoint's step (rows without a step are left out: TensorBoard needs one)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for row in rows:
            if row.step is None:
                continue
            for metric in (*METRICS, "wall_s"):
                value = getattr(row, metric)
                if value is not None and math.isfinite(value):
                    writer.add_scalar(tensorboard_tag(row, metric), value, row.step)


def tensorboard_tag(row: ResultRow, metric: str) -> str:
    return f"{row.label}/{metric}/cfg{row.guidance_scale:g}/{row.sampler}"
