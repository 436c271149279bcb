"""What a hostile artifact, rules file or config can do: nothing. Each case is a file an attacker without
the signing key could write (the manifest re-sealed to match), tried where serving reads it; every one is
refused with an error naming it, and no payload runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from cascade.config import AppConfig
from cascade.core.artifacts import MANIFEST, ArtifactStore, sha256_file
from cascade.core.errors import ArtifactError, ConfigError
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.rerank.rules_file import parse_rules


class _Payload:
    """Unpickling this runs ``touch <marker>``: proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(config, built, tmp_path):
    """A copy of the published recall artifact in a store of its own, and a marker no payload may make."""
    source = config.artifact_store().require(RECALL)
    root = tmp_path / "artifacts"
    shutil.copytree(source.path, root / RECALL / source.version)
    (root / RECALL / "CURRENT").write_text(source.version + "\n")
    return ArtifactStore(root), source.version, tmp_path / "payload-ran"


def _reseal(store: ArtifactStore, version: str, name: str, path: Path | None = None) -> None:
    """Make the manifest vouch for ``name`` as it now is (or for a file at ``path``), as an attacker who can
    write the folder but has no signing key would."""
    folder = store.root / RECALL / version
    manifest = json.loads((folder / MANIFEST).read_text())
    target = path or folder / name
    manifest["files"][name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_pickle_in_place_of_weights_is_refused_and_never_runs(hostile):
    store, version, marker = hostile
    folder = store.root / RECALL / version
    (folder / "two_tower.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    _reseal(store, version, "two_tower.safetensors")
    bundle = RecallBundle(store.require(RECALL))
    with pytest.raises(Exception, match=r"(?i)header|safetensor|invalid|deserializ"):
        bundle.two_tower()
    assert not marker.exists()


def test_a_pickled_array_is_refused_and_never_runs(hostile):
    store, version, marker = hostile
    folder = store.root / RECALL / version
    with open(folder / "popularity.npy", "wb") as fh:
        np.save(fh, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    _reseal(store, version, "popularity.npy")
    with pytest.raises(ValueError, match="allow_pickle"):
        RecallBundle(store.require(RECALL)).popularity()
    assert not marker.exists()


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(hostile, tmp_path):
    store, version, _ = hostile
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the model loader")
    _reseal(store, version, "../../../secret.txt", path=outside)
    with pytest.raises(ArtifactError, match="leaves the artifact folder"):
        store.require(RECALL).verify()


def test_a_symbolic_link_out_of_the_folder_is_refused(hostile, tmp_path):
    store, version, _ = hostile
    folder = store.root / RECALL / version
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(folder / "popularity.npy", outside)
    (folder / "popularity.npy").unlink()
    (folder / "popularity.npy").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        store.require(RECALL).verify()


def test_a_file_planted_beside_the_sealed_ones_is_refused(hostile):
    store, version, marker = hostile
    (store.root / RECALL / version / "extra.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ArtifactError, match="not in the manifest"):
        store.require(RECALL).verify()
    assert not marker.exists()


def test_a_current_pointer_that_is_a_path_is_refused(hostile):
    store, _, _ = hostile
    (store.root / RECALL / "CURRENT").write_text("../../../../etc\n")
    with pytest.raises(ArtifactError, match="not a kind and version name"):
        store.current(RECALL)


@pytest.mark.parametrize(
    "text, field",
    [
        ('version = "x"\n[[rules]]\nkind = "boost"\nfactor = 2.0\ngenres = ["Drama"]\n'
         '__class__ = "os.system"\n', "__class__"),
        ('version = "x"\n[[rules]]\nkind = "__import__(\'os\')"\n', "kind"),
        ('version = "x"\n[[rules]]\nkind = "boost"\nfactor = 1e308\ngenres = ["Drama"]\n', "factor"),
    ],
)  # fmt: skip
def test_rules_with_injected_values_are_refused_naming_the_field(text, field):
    with pytest.raises(ConfigError, match=field):
        parse_rules(text)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"serving": {"port": "50051; rm -rf /"}}, "port"),
        ({"serving": {"host": "0.0.0.0", "unknown": 1}}, "unknown"),
        ({"data": {"dataset": "../../etc"}}, "dataset"),
    ],
)
def test_a_config_with_injected_values_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        AppConfig.model_validate(overrides)
