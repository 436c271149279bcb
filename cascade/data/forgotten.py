"""The deny-list: users forgotten at their request (``ForgetUser``, ``cascade privacy forget``), whom no
training run, evaluation or feature load may see again. Kept beside a prepared data set
(``<name>.forgotten.json`` next to its folder), so that fetching the data set again keeps it, and honoured
by ``Dataset.load`` whatever else is asked; the data set's fingerprint changes with it, so that every model
fitted with the user is fitted again.

It names users by pseudonym (``cascade.core.privacy``), never by id: a list of who asked to be forgotten
must not itself say who they are. Matching a data set's users against it therefore needs the pseudonym key;
a deny-list written under another key is refused rather than silently matching no one.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.core.artifacts import atomic_write_bytes
from cascade.core.errors import DataError
from cascade.core.privacy import PSEUDONYM, Pseudonymiser
from cascade.data.exclusions import beside, digest_of

FORGOTTEN_SUFFIX = ".forgotten.json"


def deny_list_path(folder: Path | str) -> Path:
    return beside(folder, FORGOTTEN_SUFFIX)


@dataclass(frozen=True)
class DenyList:
    """The forgotten users' pseudonyms and the id of the key they were made with (None while empty)."""

    pseudonyms: frozenset[str] = frozenset()
    key_id: str | None = None

    @classmethod
    def load(cls, folder: Path | str) -> DenyList:
        path = deny_list_path(folder)
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        users = frozenset(str(p) for p in raw.get("pseudonyms", []))
        malformed = [p for p in users if not PSEUDONYM.fullmatch(p)]
        if malformed:
            raise DataError(f"{path}: pseudonyms: {len(malformed)} entries are not pseudonyms")
        return cls(users, raw.get("key_id"))

    @classmethod
    def add(cls, folder: Path | str, user_id: object, pseudonyms: Pseudonymiser) -> bool:
        """Add one user -> whether they were not on the list yet. Writers take turns (a file lock), and a
        reader sees the old list or the new one, never a part."""
        path = deny_list_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = cls.load(folder)
            current.check_key(pseudonyms, path)
            pseudonym = pseudonyms.of(user_id)
            if pseudonym in current.pseudonyms:
                return False
            body = {"key_id": pseudonyms.key_id, "pseudonyms": sorted(current.pseudonyms | {pseudonym})}
            atomic_write_bytes(path, json.dumps(body, indent=1).encode())
            return True

    def check_key(self, pseudonyms: Pseudonymiser | None, where: Path | str) -> None:
        if not self.pseudonyms:
            return
        if pseudonyms is None:
            raise DataError(
                f"{where}: the data set has forgotten users, and leaving them out needs the pseudonym key "
                "(privacy.pseudonym_key)"
            )
        if self.key_id != pseudonyms.key_id:
            raise DataError(
                f"{where}: the deny-list was written with the pseudonym key {self.key_id}, this process has "
                f"{pseudonyms.key_id}: configure the key it was written with"
            )

    def digest(self) -> str | None:
        """A hash of who is on the list (None when no one is): part of the data set's fingerprint."""
        return digest_of(self.pseudonyms)

    def forgotten_among(
        self, tables: list[np.ndarray], pseudonyms: Pseudonymiser | None, where: Path | str
    ) -> np.ndarray:
        """The distinct ids of ``tables``' user id columns that are on the list, each id hashed once however
        many tables hold it (empty when the list is)."""
        if not self.pseudonyms:
            return np.zeros(0, dtype=np.int64)
        self.check_key(pseudonyms, where)
        distinct = np.unique(np.concatenate([np.asarray(ids) for ids in tables]))
        return np.array(
            [u for u in distinct.tolist() if pseudonyms.of(u) in self.pseudonyms], dtype=distinct.dtype
        )
