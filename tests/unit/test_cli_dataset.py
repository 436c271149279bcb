"""Choosing a prepared dataset from the command line."""

from __future__ import annotations

import json
import subprocess
import sys


def _cascade(tmp_path, *args):
    config = tmp_path / "cascade.json"
    config.write_text(
        json.dumps(
            {"data": {"data_dir": str(tmp_path / "data")}, "artifacts_dir": str(tmp_path / "artifacts")}
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "cascade.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # anything a command writes relative to the working directory stays here
    )


def test_dataset_option_overrides_the_config_and_a_missing_one_lists_the_prepared(tmp_path):
    prepared = tmp_path / "data" / "ml-latest-small"
    prepared.mkdir(parents=True)
    (prepared / "dataset.json").write_text("{}")
    shown = _cascade(tmp_path, "--dataset", "ml-latest-small", "config", "show")
    assert shown.returncode == 0 and json.loads(shown.stdout)["data"]["dataset"] == "ml-latest-small"
    missing = _cascade(tmp_path, "--dataset", "ml-1m", "train", "recall")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "'ml-1m'" in missing.stderr and "ml-latest-small" in missing.stderr
