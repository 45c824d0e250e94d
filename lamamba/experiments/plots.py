"""PNG plots of a results table (matplotlib, no display needed):

- ``fid_vs_step.png``: FID against the training step, one line per (run, guidance scale, sampler);
- ``fid_vs_guidance.png``: FID against the guidance scale, one line per (run, step, sampler);
- ``fid_vs_gflops.png``: the papers' bubble chart, one bubble per run at its newest evaluated step
  and best FID over scales and samplers; x = model GFLOPs, bubble area proportional to GFLOPs.

Each function returns the figure (its lines and bubbles hold exactly the table's numbers) and the
series it drew; ``write_plots`` stores those series as ``<plot>.json`` beside each PNG.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict

from lamamba import storage
from lamamba.experiments.results import ResultRow

PLOTS = ("fid_vs_step", "fid_vs_guidance", "fid_vs_gflops")
BUBBLE_AREA_PER_GFLOP = 20.0  # points^2 per GFLOP, scaled down when the largest bubble would be huge
MAX_BUBBLE_AREA = 4000.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt



def _with_fid(rows: list[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.fid is not None]


def fid_vs_step(rows: list[ResultRow]):
    """(figure, {(label, scale, sampler): [(step, fid), ...]})."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in _with_fid(rows):
        if r.step is not None:
            series[(r.label, r.guidance_scale, r.sampler)].append((r.step, r.fid))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (label, scale, sampler), points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{label} cfg {scale:g} {sampler}")
    ax.set(xlabel="training step", ylabel="FID", title="FID vs training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, bool(series))
    return fig, dict(series)


def fid_vs_guidance(rows: list[ResultRow]):
    """(figure, {(label, step, sampler): [(scale, fid), ...]})."""
    plt = _pyplot()
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in _with_fid(rows):
        series[(r.label, r.step, r.sampler)].append((r.guidance_scale, r.fid))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (label, step, sampler), points in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1, kv[0][2])):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{label} step {step if step is not None else '?'} {sampler}")
    ax.set(xlabel="guidance scale", ylabel="FID", title="FID vs classifier-free guidance scale")
    _finish(ax, bool(series))
    return fig, dict(series)


def best_per_run(rows: list[ResultRow]) -> dict[str, ResultRow]:
    """Each run's row at its newest evaluated step with the lowest FID there (over scales, samplers)."""
    best: dict[str, ResultRow] = {}
    for r in _with_fid(rows):
        if r.gflops is None:
            continue
        current = best.get(r.label)
        newer = current is None or (r.step or -1) > (current.step or -1)
        if newer or ((r.step or -1) == (current.step or -1) and r.fid < current.fid):
            best[r.label] = r
    return best


def fid_vs_gflops(rows: list[ResultRow]):
    """(figure, {label: (gflops, fid, bubble area)}): bubble area proportional to GFLOPs."""
    plt = _pyplot()
    best = best_per_run(rows)
    scale = BUBBLE_AREA_PER_GFLOP
    if best:
        scale = min(scale, MAX_BUBBLE_AREA / max(r.gflops for r in best.values()))
    points = {label: (r.gflops, r.fid, r.gflops * scale) for label, r in sorted(best.items())}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, (gflops, fid, area) in points.items():
        ax.scatter([gflops], [fid], s=[area], alpha=0.5, label=label)
        ax.annotate(f"{label} ({fid:.2f})", (gflops, fid), xytext=(0, 12), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="model GFLOPs per image", ylabel="FID (newest step, best scale)",
           title="FID vs GFLOPs (bubble area = GFLOPs)")
    if len(points) > 1 and max(p[0] for p in points.values()) / min(p[0] for p in points.values()) > 20:
        ax.set_xscale("log")
    ax.margins(0.2)  # room for the bubbles and their labels
    _finish(ax, bool(points), legend=False)  # each bubble is labelled; scaled legend markers would hide data
    return fig, points


def _finish(ax, has_data: bool, legend: bool = True) -> None:
    ax.grid(True, alpha=0.3)
    if has_data and legend:
        ax.legend(fontsize=7)
    elif not has_data:
        ax.text(0.5, 0.5, "no points with FID yet", ha="center", va="center", transform=ax.transAxes)
    ax.figure.tight_layout()


def write_plots(rows: list[ResultRow], out_dir: str) -> dict[str, str]:
    """The three PNGs under ``out_dir``; returns {plot name: URL}."""
    plt = _pyplot()
    written = {}
    for name, draw in (("fid_vs_step", fid_vs_step), ("fid_vs_guidance", fid_vs_guidance),
                       ("fid_vs_gflops", fid_vs_gflops)):
        fig, series = draw(rows)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        url = storage.join(out_dir, f"{name}.png")
        storage.write_bytes(url, buf.getvalue())
        # the drawn numbers beside the picture, for re-plotting and for checking against the table
        data = [{"series": list(key) if isinstance(key, tuple) else key, "points": value}
                for key, value in series.items()]
        storage.write_bytes(storage.join(out_dir, f"{name}.json"), (json.dumps(data, indent=1) + "\n").encode())
        written[name] = url
    return written
