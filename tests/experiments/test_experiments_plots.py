"""The results table and plots on a hand-made table of two runs (fast; no model runs)."""

import json

import numpy as np
import pytest

from lamamba.experiments.plots import best_per_run, fid_vs_gflops, write_plots
from lamamba.experiments.results import ResultRow, read_table, write_table


def rows():
    out = []
    for label, gflops, base in (("LaMamba-Diff-XL", 50.47, 10.0), ("DiT-XL/2", 118.69, 12.0)):
        for step in (100, 200):
            for scale in (1.0, 1.5, 4.0):
                fid = base - step / 100 + abs(scale - 1.5) * 2
                out.append(ResultRow(label, f"ckpt/{label}/step_{step:08d}", step, scale, "ddpm250", 1000,
                                     fid=fid, sfid=fid + 1, gflops=gflops, params=675_000_000, wall_s=1.0))
    return out


def test_table_round_trips_through_csv_and_json(tmp_path):
    write_table(rows(), str(tmp_path))
    assert read_table(str(tmp_path / "results.csv")) == read_table(str(tmp_path / "results.json"))
    assert sorted(r.fid for r in read_table(str(tmp_path / "results.csv"))) == sorted(r.fid for r in rows())


def test_bubbles_are_each_runs_newest_step_at_its_best_scale_with_area_proportional_to_gflops(tmp_path):
    best = best_per_run(rows())
    assert {k: (r.step, r.guidance_scale) for k, r in best.items()} == {"LaMamba-Diff-XL": (200, 1.5),
                                                                        "DiT-XL/2": (200, 1.5)}
    fig, points = fid_vs_gflops(rows())
    sizes = {c.get_label(): c.get_sizes()[0] for c in fig.axes[0].collections}
    assert sizes["DiT-XL/2"] / sizes["LaMamba-Diff-XL"] == pytest.approx(118.69 / 50.47)
    assert points["DiT-XL/2"][:2] == (118.69, 10.0) and points["LaMamba-Diff-XL"][:2] == (50.47, 8.0)
    written = write_plots(rows(), str(tmp_path))
    assert set(written) == {"fid_vs_step", "fid_vs_guidance", "fid_vs_gflops"}
    data = json.loads((tmp_path / "fid_vs_guidance.json").read_text())
    assert len(data) == 4 and all(len(d["points"]) == 3 for d in data)
    assert np.allclose([p[0] for p in data[0]["points"]], [1.0, 1.5, 4.0])
