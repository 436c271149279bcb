"""Users every offline input leaves out: profiles the guard's scan flagged as fake, until an operator clears
them. Kept beside a prepared data set (``<name>.exclusions.json`` next to its folder), so that fetching the
data set again keeps them, and honoured by ``Dataset.load``: training, evaluation and feature loads all see
the data set without these users, and the data set's fingerprint changes with them, so that models fitted
with them are fitted again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascade.core.artifacts import atomic_write_bytes

EXCLUSIONS_SUFFIX = ".exclusions.json"


def beside(folder: Path | str, suffix: str) -> Path:
    """The file ``<name><suffix>`` next to a data set's folder: kept when the folder is prepared again."""
    folder = Path(folder)
    return folder.with_name(folder.name + suffix)


def digest_of(names: frozenset[str]) -> str | None:
    """A hash of a set of users, as text (None for none): what a data set's fingerprint takes of a list
    kept beside it."""
    if not names:
        return None
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def exclusions_path(folder: Path | str) -> Path:
    return beside(folder, EXCLUSIONS_SUFFIX)


@dataclass(frozen=True)
class GuardExclusions:
    """The last scan's verdict: the flagged users (ids as text) with their score and the item they push,
    and what was scanned (the data set's own fingerprint and the scan's settings)."""

    users: tuple[str, ...] = ()
    reasons: tuple[dict, ...] = ()
    scanned: str | None = None  # fingerprint of the data set and settings the scan ran on


@dataclass(frozen=True)
class Exclusions:
    guard: GuardExclusions = field(default_factory=GuardExclusions)

    @classmethod
    def load(cls, folder: Path | str) -> Exclusions:
        path = exclusions_path(folder)
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        guard = raw.get("guard", {})
        return cls(
            GuardExclusions(
                users=tuple(str(u) for u in guard.get("users", [])),
                reasons=tuple(guard.get("reasons", [])),
                scanned=guard.get("scanned"),
            )
        )

    def save(self, folder: Path | str) -> Path:
        path = exclusions_path(folder)
        body = {
            "guard": {
                "users": list(self.guard.users),
                "reasons": list(self.guard.reasons),
                "scanned": self.guard.scanned,
            }
        }
        atomic_write_bytes(path, json.dumps(body, indent=2).encode())
        return path

    @property
    def users(self) -> frozenset[str]:
        """Every excluded user id, as text."""
        return frozenset(self.guard.users)

    def digest(self) -> str | None:
        """A hash of who is excluded (None when nobody is): part of the data set's fingerprint."""
        return digest_of(self.users)

    def mask(self, user_ids: np.ndarray) -> np.ndarray:
        """(N,) bool: which of ``user_ids`` are excluded."""
        users = self.users
        if not users or not len(user_ids):
            return np.zeros(len(user_ids), dtype=bool)
        return np.isin(np.asarray(user_ids).astype(str), np.array(sorted(users), dtype=str))
