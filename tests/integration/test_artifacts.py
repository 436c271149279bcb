from __future__ import annotations

import hashlib
import json

import pytest

from cascade.core.artifacts import MANIFEST, ArtifactStore
from cascade.core.errors import ArtifactError


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


_KILLED_PUBLISHER = """
import sys, time
from pathlib import Path
from cascade.core.artifacts import MANIFEST, ArtifactStore

def write(folder):
    (folder / "weights.bin").write_bytes(b"x" * 1_000_000)
    (folder / "half.bin").write_bytes(b"y" * 10)
    Path(sys.argv[2]).write_text("writing")  # tell the parent we are midway
    time.sleep(60)

ArtifactStore(sys.argv[1]).publish("recall", write, fingerprint="k" * 16, config={}, schema_version=1)
"""


def test_sigkill_midway_through_a_publication_leaves_the_old_version_current(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    store = ArtifactStore(tmp_path / "store")
    old = _publish(store, "old")
    flag = tmp_path / "midway"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISHER, str(store.root), str(flag)])
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.current("recall").version == old.version
    assert store.versions("recall") == [old.version]  # the temp folder is not a version
    leftovers = [p for p in (store.root / "recall").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # ... but it is there, until it is old enough to be certainly dead
    assert store.remove_stale_temp("recall", older_than_s=0) == [leftovers[0].name]


def test_rollback_goes_to_the_previous_version_and_refuses_past_the_oldest(tmp_path):
    store = ArtifactStore(tmp_path)
    first = _publish(store, "one")
    second = _publish(store, "two")
    assert store.previous("recall").version == first.version
    store.set_current("recall", first.version)
    assert store.current("recall").version == first.version
    with pytest.raises(ArtifactError, match="oldest"):
        store.previous("recall")
    (second.path / "weights.bin").write_text("tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        store.set_current("recall", second.version)  # never switch to a damaged version
    assert store.current("recall").version == first.version


def test_a_re_sealed_manifest_is_refused_by_a_store_with_a_signing_key(tmp_path):
    signed = ArtifactStore(tmp_path, signing_key=b"k" * 32)

    def write(folder):
        (folder / "weights.bin").write_bytes(b"\x00" * 16)

    ref = signed.publish("recall", write, fingerprint="f" * 16, config={}, schema_version=1)
    assert signed.get("recall", ref.version).manifest["files"]
    # someone without the key changes a file and re-seals the manifest with its new sha256
    (ref.path / "weights.bin").write_bytes(b"\x01" * 16)
    manifest = json.loads((ref.path / MANIFEST).read_text())
    manifest["files"]["weights.bin"]["sha256"] = hashlib.sha256(b"\x01" * 16).hexdigest()
    (ref.path / MANIFEST).write_text(json.dumps(manifest))
    ArtifactStore(tmp_path).get("recall", ref.version).verify()  # without the key nothing can tell
    with pytest.raises(ArtifactError, match="signature does not match"):
        signed.get("recall", ref.version)
    with pytest.raises(ArtifactError, match="signature does not match"):
        ArtifactStore(tmp_path, signing_key=b"z" * 32).current("recall")  # another key
    unsigned = ArtifactStore(tmp_path / "unsigned").publish(
        "index", write, fingerprint="f" * 16, config={}, schema_version=1
    )
    with pytest.raises(ArtifactError, match="not signed"):
        ArtifactStore(tmp_path / "unsigned", signing_key=b"k" * 32).get("index", unsigned.version)
