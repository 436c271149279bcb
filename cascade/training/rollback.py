"""`cascade rollback`: point an artifact kind's CURRENT back at an earlier version."""

from __future__ import annotations

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef
from cascade.recall.bundle import INDEX, RECALL, IndexBundle


def rollback(config: AppConfig, kind: str, to: str | None = None) -> ArtifactRef:
    """Point ``kind``'s CURRENT back at ``to`` (default: the version before the current one).

    An index is only rolled back to a version built from the current recall model, since serving
    refuses any other combination."""
    store = config.artifact_store()
    target = store.get(kind, to) if to else store.previous(kind)
    if kind == INDEX:
        recall_now = store.require(RECALL).version
        built_from = IndexBundle(target).built_from
        if built_from != recall_now:
            raise RuntimeError(
                f"index {target.version} was built from recall {built_from}, but the current recall is "
                f"{recall_now}; roll back recall first or pick another version"
            )
    return store.set_current(kind, target.version)
