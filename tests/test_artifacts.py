from __future__ import annotations

import json

import pytest

from cascade.artifacts import ArtifactStore
from cascade.errors import ArtifactError


def _publish(store, payload: str, fp: str = "f" * 16):
    return store.publish(
        "recall",
        lambda folder: (folder / "weights.bin").write_text(payload),
        fingerprint=fp,
        config={"a": 1},
        schema_version=1,
        metrics={"recall@100": 0.5},
    )


def test_publish_writes_manifest_and_switches_current(tmp_path):
    store = ArtifactStore(tmp_path)
    first = _publish(store, "one")
    assert store.current("recall").version == first.version
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert set(manifest) >= {"files", "config", "schema_version", "metrics", "git_commit", "fingerprint"}
    assert manifest["files"]["weights.bin"]["bytes"] == 3
    second = _publish(store, "two")
    assert store.current("recall").version == second.version
    assert store.versions("recall") == sorted([first.version, second.version])  # old versions stay
    second.verify()


def test_a_failure_midway_leaves_nothing_visible(tmp_path):
    store = ArtifactStore(tmp_path)
    good = _publish(store, "good")

    def crash(folder):
        (folder / "weights.bin").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.publish("recall", crash, fingerprint="x" * 16, config={}, schema_version=1)
    assert store.current("recall").version == good.version
    assert store.versions("recall") == [good.version]
    assert not [p for p in (tmp_path / "recall").iterdir() if p.name.startswith(".tmp-")]


def test_verify_detects_a_corrupted_file(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = _publish(store, "payload")
    (ref.path / "weights.bin").write_text("tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        ref.verify()
    with pytest.raises(ArtifactError, match="no published"):
        store.require("index")
