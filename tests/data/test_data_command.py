"""`lamamba encode CONFIG [key=value ...]` end to end on the bundled digits config."""

import json

from launcher.cli import main


def test_encode_command_runs_reruns_and_reports_config_errors(tmp_path, capsys):
    args = ["encode", "configs/encode/digits.yaml", f"run_dir={tmp_path}", "source.split=test"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "images encoded: 450" in out and "skipped images: 0" in out
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert (manifest["num_items"], manifest["channels"], manifest["latent_size"]) == (450, 1, 8)
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "encode.log").exists()

    assert main(args) == 0
    assert "shards written: 0, already done: 1" in capsys.readouterr().out

    assert main([*args, "shard_size=0"]) == 2
    assert "shard_size" in capsys.readouterr().err
    assert main(["encode", "configs/encode/tiny_test.yaml", f"run_dir={tmp_path}", f"source.path={tmp_path}/none"]) == 2
    assert "not a folder" in capsys.readouterr().err
