"""Purchases with money in them: the data customer value is learned from.

One table, ``transactions``: customer_id id (int64 when every id is an integer, else str), timestamp int64
(unix seconds), quantity int64 (units bought), amount float64 (money spent), and optionally item_id (what
was bought). Optionally a second, ``sessions``: customer_id, timestamp int64 (when a visit began),
dwell_seconds float64 (how long it lasted). A log may name the interactions data set of the same customers
(``interactions_dataset``: their ratings and demographics; the synthetic generator's logs do). Saved like a
data set (``dataset.json`` of kind "transactions" beside parquet files), and loaded from CDNOW's master
file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.errors import DataError
from cascade.core.privacy import Pseudonymiser
from cascade.data.dataset import _ids, publish_tables
from cascade.data.forgotten import DenyList

KIND = "transactions"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
COLUMNS = ("customer_id", "timestamp", "quantity", "amount")
SESSION_COLUMNS = ("customer_id", "timestamp", "dwell_seconds")


@dataclass(frozen=True)
class Transactions:
    name: str
    table: pd.DataFrame  # COLUMNS (and item_id when known), ordered by customer_id, then timestamp
    sessions: pd.DataFrame | None = None  # SESSION_COLUMNS, same order
    interactions_dataset: str | None = None  # the data set with these customers' ratings, if any

    @classmethod
    def create(
        cls,
        name: str,
        table: pd.DataFrame,
        sessions: pd.DataFrame | None = None,
        interactions_dataset: str | None = None,
    ) -> Transactions:
        """Validate and normalise to the canonical columns, dtypes and order."""
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise DataError(f"transactions table lacks column(s) {missing}")
        out = pd.DataFrame(
            {
                "customer_id": _ids(table["customer_id"].reset_index(drop=True), "transactions.customer_id"),
                "timestamp": table["timestamp"].to_numpy().astype(np.int64),
                "quantity": table["quantity"].to_numpy().astype(np.int64),
                "amount": table["amount"].to_numpy().astype(np.float64),
            }
        )
        if "item_id" in table.columns:
            out["item_id"] = _ids(table["item_id"].reset_index(drop=True), "transactions.item_id")
        if (out["quantity"] < 0).any() or not np.isfinite(out["amount"]).all() or (out["amount"] < 0).any():
            raise DataError("transactions: quantities and amounts must be finite and non-negative")
        out = out.sort_values(["customer_id", "timestamp"], kind="mergesort", ignore_index=True)
        if sessions is not None:
            missing = [c for c in SESSION_COLUMNS if c not in sessions.columns]
            if missing:
                raise DataError(f"sessions table lacks column(s) {missing}")
            sessions = pd.DataFrame(
                {
                    "customer_id": _ids(
                        sessions["customer_id"].reset_index(drop=True), "sessions.customer_id"
                    ),
                    "timestamp": sessions["timestamp"].to_numpy().astype(np.int64),
                    "dwell_seconds": sessions["dwell_seconds"].to_numpy().astype(np.float64),
                }
            )
            dwell = sessions["dwell_seconds"].to_numpy()
            if not np.isfinite(dwell).all() or (dwell < 0).any():
                raise DataError("sessions: dwell_seconds must be finite and non-negative")
            sessions = sessions.sort_values(["customer_id", "timestamp"], kind="mergesort", ignore_index=True)
        return cls(name, out, sessions, interactions_dataset)

    def save(self, folder: Path | str) -> Path:
        tables = {KIND: self.table} | ({"sessions": self.sessions} if self.sessions is not None else {})
        extra = {"interactions_dataset": self.interactions_dataset} if self.interactions_dataset else {}
        return publish_tables(Path(folder), self.name, tables, kind=KIND, extra=extra)

    @classmethod
    def load(cls, folder: Path | str, pseudonyms: Pseudonymiser | None = None) -> Transactions:
        """The transactions saved in ``folder``, without the customers its deny-list names (matching them
        needs ``pseudonyms`` once there are any)."""
        folder = Path(folder)
        meta_path = folder / "dataset.json"
        if not meta_path.is_file():
            raise DataError(
                f"no prepared transactions at {folder}: `cascade data fetch cdnow` prepares CDNOW"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != KIND:
            raise DataError(
                f"{folder} holds a data set of kind {meta.get('kind', 'interactions')!r}, not {KIND}"
            )
        sessions_path = folder / "sessions.parquet"
        table = pd.read_parquet(folder / f"{KIND}.parquet")
        sessions = pd.read_parquet(sessions_path) if sessions_path.is_file() else None
        frames = [table] if sessions is None else [table, sessions]
        forgotten = DenyList.load(folder).forgotten_among(
            [frame["customer_id"].to_numpy() for frame in frames], pseudonyms, folder
        )
        if len(forgotten):
            table = table[~np.isin(table["customer_id"].to_numpy(), forgotten)]
            if sessions is not None:
                sessions = sessions[~np.isin(sessions["customer_id"].to_numpy(), forgotten)]
        return cls.create(
            meta["name"], table, sessions=sessions, interactions_dataset=meta.get("interactions_dataset")
        )

    @property
    def customers(self) -> np.ndarray:
        """(C,) the distinct customer ids, sorted."""
        return np.unique(self.table["customer_id"].to_numpy())


def load_cdnow(text: str, name: str = "cdnow") -> Transactions:
    """CDNOW's master file: whitespace-separated customer id, date (YYYYMMDD), number of CDs and dollar
    value, one purchase per line, after a header line. Dates become midnight UTC."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if rows and not rows[0][1].isdigit():  # the header
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) != 4), None)
    if bad is not None:
        raise DataError(f"CDNOW line {bad + 2}: expected 4 fields, got {rows[bad]!r}")
    frame = pd.DataFrame(rows, columns=["customer", "date", "cds", "dollars"])
    dates = pd.to_datetime(frame["date"], format="%Y%m%d", utc=True, errors="coerce")
    if dates.isna().any():
        raise DataError(f"CDNOW: unreadable date {frame['date'][dates.isna()].iloc[0]!r}")
    return Transactions.create(
        name,
        pd.DataFrame(
            {
                "customer_id": frame["customer"].astype("int64"),
                "timestamp": ((dates - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64),
                "quantity": frame["cds"].astype("int64"),
                "amount": frame["dollars"].astype("float64"),
            }
        ),
    )
