"""Run ids: fixed by the job, the config file and the settings; valid Kubernetes names."""

import dataclasses

import pytest

from launcher import runs


@dataclasses.dataclass
class _Cfg:
    run_dir: str = "runs/x"
    lr: float = 1e-4


def test_run_id_depends_on_settings_not_on_run_dir():
    a = runs.make_run_id("train", "configs/train/XL_256.yaml", _Cfg())
    assert a.startswith("train-xl-256-") and len(a) == len("train-xl-256-") + 8
    assert runs.make_run_id("train", "configs/train/XL_256.yaml", _Cfg(run_dir="elsewhere")) == a
    assert runs.make_run_id("train", "configs/train/XL_256.yaml", _Cfg(lr=2e-4)) != a


def test_run_id_is_a_short_dns_label():
    run_id = runs.make_run_id("evaluate", "/x/A very_long config.name.with.dots-and_more_words.yaml", _Cfg())
    assert runs.validate_run_id(run_id) == run_id and len(run_id) <= 42
    for bad in ("Upper", "under_score", "-lead", "x" * 64):
        with pytest.raises(ValueError):
            runs.validate_run_id(bad)


def test_records_are_found_by_id_or_dir(tmp_path):
    root = str(tmp_path)
    record = runs.RunRecord(run_id="encode-d-12345678", job="encode", backend="local",
                            run_dir=runs.resolve_run_dir(root, "encode-d-12345678"), config_hash="h", nodes=1,
                            gpus_per_node=0, handle={"pid": 1})
    record.save()
    assert runs.find_run("encode-d-12345678", root) == record
    assert runs.find_run(record.run_dir) == record
    assert runs.list_runs(root) == [record]
    with pytest.raises(runs.RunNotFound, match="no run 'nope'"):
        runs.find_run("nope", root)
