"""The canonical in-memory dataset every loader produces and every stage consumes.

Columns:
    interactions: user_id id, item_id id, rating float32, timestamp int64 (unix seconds)
    users:        user_id id, gender str ("F", "M" or "" unknown), age int64 (-1 unknown),
                  occupation str ("" unknown), zip_code str ("" unknown)
    items:        item_id id, title str, genres str (pipe-separated names), year int64 (0 unknown)

An id column is int64 when every id of its kind (users, or items) is an integer, as in MovieLens, else
str: any non-empty UTF-8 of at most MAX_ID_BYTES bytes (SKUs, UUIDs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.artifacts import atomic_write_bytes, sha256_file
from cascade.core.errors import DataError
from cascade.core.privacy import Pseudonymiser
from cascade.core.schema import MAX_ID_BYTES, id_array
from cascade.data.exclusions import Exclusions
from cascade.data.forgotten import DenyList

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = {"user_id": "id", "item_id": "id", "rating": "float32", "timestamp": "int64"}
USER_COLUMNS = {"user_id": "id", "gender": "str", "age": "int64", "occupation": "str", "zip_code": "str"}
ITEM_COLUMNS = {"item_id": "id", "title": "str", "genres": "str", "year": "int64"}
_FILES = ("interactions", "users", "items")


def _conform(frame: pd.DataFrame, columns: dict[str, str], table: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{table} table lacks column(s) {missing}")
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for name, dtype in columns.items():
        col = frame[name].reset_index(drop=True)
        if dtype == "str":
            out[name] = col.fillna("").astype(str).to_numpy(dtype=object)
        elif dtype == "id":
            out[name] = _ids(col, f"{table}.{name}")
        else:
            out[name] = col.to_numpy().astype(dtype)
    return out


def _ids(column: pd.Series, where: str) -> np.ndarray:
    """An id column: int64 when its values are integers, else str, each non-empty and at most MAX_ID_BYTES
    bytes of UTF-8."""
    values = column.to_numpy()
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        raise DataError(f"{where}: ids must be integers or strings, not floats (a missing id?)")
    texts = [str(v) for v in values.tolist()]
    bad = next((t for t in texts if not t or len(t.encode()) > MAX_ID_BYTES), None)
    if bad is not None:
        raise DataError(f"{where}: ids must be 1-{MAX_ID_BYTES} bytes of UTF-8, got {bad[:40]!r}")
    return id_array(np.array(texts, dtype=object))


@dataclass(frozen=True)
class Dataset:
    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    @classmethod
    def create(
        cls, name: str, interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
    ) -> Dataset:
        """Validate and normalise the three tables to the canonical columns and dtypes."""
        interactions = _conform(interactions, INTERACTION_COLUMNS, "interactions")
        users = _conform(users, USER_COLUMNS, "users")
        items = _conform(items, ITEM_COLUMNS, "items")
        for column, table, frame in (("user_id", "users", users), ("item_id", "items", items)):
            ours, theirs = interactions[column], frame[column]
            integer = pd.api.types.is_integer_dtype
            if len(ours) and len(theirs) and integer(ours.dtype) != integer(theirs.dtype):
                raise DataError(
                    f"interactions.{column} and {table}.{column}: one has integer ids, one strings"
                )
        if users["user_id"].duplicated().any():
            raise DataError("users table has duplicate user_id values")
        if items["item_id"].duplicated().any():
            raise DataError("items table has duplicate item_id values")
        unknown_items = ~np.isin(interactions["item_id"].to_numpy(), items["item_id"].to_numpy())
        if unknown_items.any():
            raise DataError(
                f"{int(unknown_items.sum())} interactions name items missing from the items table"
            )
        # Users may interact without a profile row (ml-latest has no user table): give them an empty one.
        known = np.isin(np.unique(interactions["user_id"].to_numpy()), users["user_id"].to_numpy())
        if not known.all():
            extra_ids = np.unique(interactions["user_id"].to_numpy())[~known]
            filler = pd.DataFrame(
                {
                    "user_id": extra_ids,
                    "gender": "",
                    "age": -1,
                    "occupation": "",
                    "zip_code": "",
                }
            )
            users = _conform(pd.concat([users, filler], ignore_index=True), USER_COLUMNS, "users")
            logger.warning(
                "%s: %d of %d users have no profile row: their demographics are unknown, so the "
                "segment-popular channel serves them plain popularity and the models see no gender, age, "
                "occupation or zip code for them",
                name,
                len(extra_ids),
                len(known),
            )
        return cls(
            name,
            interactions,
            users.sort_values("user_id", ignore_index=True),
            items.sort_values("item_id", ignore_index=True),
        )

    def save(self, folder: Path | str) -> Path:
        """Write parquet files and a ``dataset.json`` with their hashes; the folder appears whole or not."""
        return publish_tables(Path(folder), self.name, {t: getattr(self, t) for t in _FILES})

    @classmethod
    def load(
        cls, folder: Path | str, exclusions: bool = True, pseudonyms: Pseudonymiser | None = None
    ) -> Dataset:
        """The data set saved in ``folder``, without the users its deny-list names (always: matching them
        needs ``pseudonyms`` once there are any, ``cascade.data.forgotten``) and without those its guard
        exclusions name (``exclusions``: unless False, which only the guard's scan asks for, since it
        decides them)."""
        folder = Path(folder)
        meta_path = folder / "dataset.json"
        if not meta_path.is_file():
            raise DataError(_not_prepared(folder))
        meta = json.loads(meta_path.read_text())
        tables = {t: pd.read_parquet(folder / f"{t}.parquet") for t in _FILES}
        excluded = Exclusions.load(folder) if exclusions else Exclusions()
        user_tables = ("interactions", "users")
        forgotten = DenyList.load(folder).forgotten_among(
            [tables[table]["user_id"].to_numpy() for table in user_tables], pseudonyms, folder
        )
        for table in user_tables:
            ids = tables[table]["user_id"].to_numpy()
            dropped = excluded.mask(ids) | np.isin(ids, forgotten)
            if dropped.any():
                tables[table] = tables[table][~dropped].reset_index(drop=True)
        return cls.create(meta["name"], tables["interactions"], tables["users"], tables["items"])

    @staticmethod
    def fingerprint_of(folder: Path | str, exclusions: bool = True) -> str:
        """Content hash of a saved dataset, read from its metadata without loading the tables; with its
        deny-list, and its exclusions (unless False), when it has any."""
        meta_path = Path(folder) / "dataset.json"
        if not meta_path.is_file():
            raise DataError(_not_prepared(Path(folder)))
        files = json.loads(meta_path.read_text())["files"]
        content = "-".join(files[t][:12] for t in _FILES)
        digest = Exclusions.load(folder).digest() if exclusions else None
        content = content if digest is None else f"{content}-x{digest[:12]}"
        forgotten = DenyList.load(folder).digest()
        return content if forgotten is None else f"{content}-f{forgotten[:12]}"


def publish_tables(
    folder: Path,
    name: str,
    tables: dict[str, pd.DataFrame],
    kind: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write each table as ``<table>.parquet`` and a ``dataset.json`` with their hashes and counts (and
    ``kind`` and the ``extra`` fields when given) into ``folder``, which appears whole or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for table, frame in tables.items():
        frame.to_parquet(tmp / f"{table}.parquet", index=False)
    meta = {
        "name": name,
        **({"kind": kind} if kind else {}),
        **(extra or {}),
        "files": {t: sha256_file(tmp / f"{t}.parquet") for t in tables},
        "counts": {t: len(frame) for t, frame in tables.items()},
    }
    atomic_write_bytes(tmp / "dataset.json", json.dumps(meta, indent=2).encode())
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, folder)
    logger.info("saved dataset %s to %s (%s)", name, folder, meta["counts"])
    return folder


def prepared_datasets(data_dir: Path | str) -> list[str]:
    """Names of the prepared datasets under ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir() if (p / "dataset.json").is_file())


def _not_prepared(folder: Path) -> str:
    prepared = prepared_datasets(folder.parent)
    there = (
        f"prepared under {folder.parent}: {', '.join(prepared)}"
        if prepared
        else f"none under {folder.parent}"
    )
    return (
        f"no prepared dataset {folder.name!r} at {folder} ({there}). Choose one with --dataset NAME or "
        f"data.dataset in the config, or prepare it: `cascade data fetch {folder.name}` (MovieLens, "
        "optionally --from PATH) or `cascade data synth`"
    )
