"""What one serving replica holds in memory, by what it grows with: per catalogue item, per user the
models know, per training interaction, and fixed. The sizing guide (README) multiplies these out.

The served models are loaded as a server loads them and every array they reach is counted once (NumPy
arrays, torch tensors, the FAISS index as it serialises), attributed by its leading dimension: the number
of items (with or without the padding row), of users, or of the training window's interactions; anything
else is fixed. Python-level tables (the id dictionaries) are not arrays and are estimated apart, from
their entry counts.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path

import faiss
import numpy as np
import torch

from cascade.bench.report import write_outputs as write_report
from cascade.config import AppConfig
from cascade.serving.models import ServingModels

logger = logging.getLogger(__name__)

_MAX_DEPTH = 12


def _leading(shape: tuple) -> tuple[int | None, int | None]:
    return (shape[0] if len(shape) else None), (shape[1] if len(shape) > 1 else None)


class _Ledger:
    def __init__(self, items: int, users: int, interactions: int):
        self.sizes = {"item": {items, items - 1}, "user": {users, users - 1}, "interaction": {interactions}}
        self.bytes: dict[str, int] = defaultdict(int)
        self.where: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.seen: set[int] = set()

    def add(self, path: str, rows: int | None, nbytes: int, columns: int | None = None) -> None:
        kind = next((k for k, sizes in self.sizes.items() if rows in sizes), "fixed")
        if kind == "item" and columns in self.sizes["item"]:
            kind = "item pair"  # an item x item matrix (EASE): grows with the square of the catalogue
        self.bytes[kind] += nbytes
        self.where[kind][path] += nbytes

    def walk(self, obj, path: str, depth: int = 0) -> None:
        if obj is None or depth > _MAX_DEPTH or isinstance(obj, (str, bytes, int, float, bool, type)):
            return
        key = id(obj)
        if key in self.seen:
            return
        self.seen.add(key)
        if isinstance(obj, np.ndarray):
            base = obj.base if isinstance(obj.base, np.ndarray) else None
            if base is not None and id(base) in self.seen:
                return
            rows, columns = _leading(obj.shape)
            self.add(path, rows, obj.nbytes, columns)
            return
        if isinstance(obj, torch.Tensor):
            rows, columns = _leading(tuple(obj.shape))
            self.add(path, rows, obj.element_size() * obj.nelement(), columns)
            return
        if isinstance(obj, faiss.Index):
            self.add(path, obj.ntotal, int(faiss.serialize_index(obj).nbytes))
            return
        if isinstance(obj, torch.nn.Module):
            for name, tensor in obj.state_dict(keep_vars=True).items():
                self.walk(
                    tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor,
                    f"{path}.{name}",
                    depth + 1,
                )
            return
        if isinstance(obj, dict):
            for name, value in list(obj.items())[:64]:  # an id table is counted by its size below, not walked
                self.walk(value, f"{path}[{name!r}]", depth + 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for i, value in enumerate(list(obj)[:64]):
                self.walk(value, f"{path}[{i}]", depth + 1)
            return
        if callable(obj) and not hasattr(obj, "__dict__"):
            return
        fields = getattr(obj, "__dict__", None)
        if fields is None and hasattr(obj, "__slots__"):
            fields = {name: getattr(obj, name, None) for name in obj.__slots__}
        if fields is None:
            return
        module = type(obj).__module__
        if not module.startswith(("cascade", "faiss")) and not isinstance(obj, np.ndarray):
            return  # a library's internals (LightGBM's booster is counted through its model text below)
        for name, value in fields.items():
            self.walk(value, f"{path}.{name}", depth + 1)


def account(config: AppConfig) -> dict:
    models = ServingModels.load(config.artifact_store(), config)
    items, users = models.schema.num_items, models.schema.num_users
    interactions = len(models.ranking_features.statistics.event_keys)
    ledger = _Ledger(items, users, interactions)
    ledger.walk(models, "models")
    booster = getattr(models.ranker, "booster", None)
    if booster is not None:
        ledger.add("models.ranker.booster (model text)", None, len(booster.model_to_string()))
    # the schema's id -> index tables where they are dictionaries (text ids, pseudonyms): the table and
    # its keys, per item and per user (an array table was counted in the walk)
    for kind, table in (("item", models.schema._item_table), ("user", models.schema._user_table)):
        if isinstance(table, dict):
            nbytes = sys.getsizeof(table) + sum(sys.getsizeof(key) for key in table)
            ledger.bytes[kind] += nbytes
            ledger.where[kind][f"models.schema.{kind} id table (dict)"] += nbytes
    per = {
        "item": ledger.bytes["item"] / max(items - 1, 1),
        "item pair": ledger.bytes["item pair"] / max((items - 1) ** 2, 1),
        "user": ledger.bytes["user"] / max(users - 1, 1),
        "interaction": ledger.bytes["interaction"] / max(interactions, 1),
    }
    # every part that holds 1% of its kind or more, largest first
    top = {
        kind: sorted(
            ((p, b) for p, b in where.items() if b >= 0.01 * ledger.bytes[kind]), key=lambda pb: -pb[1]
        )
        for kind, where in ledger.where.items()
    }
    return {
        "benchmark": "replica memory",
        "versions": models.versions,
        "counts": {"items": items - 1, "users": users - 1, "interactions": interactions},
        "bytes": dict(ledger.bytes),
        "bytes_per": per,
        "largest": {kind: [{"path": p, "bytes": b} for p, b in rows] for kind, rows in top.items()},
        "config": {
            "embedding_dim": config.recall.embedding_dim,
            "index_factory": config.recall.index_factory,
            "ranker": config.ranking.type,
            "history_length": config.features.history_length,
        },
    }


def store_account(config: AppConfig, sample_users: int = 2000) -> dict:
    """What the feature store holds per user (Redis ``MEMORY USAGE`` of every key of up to ``sample_users``
    users, by kind of key), and per item of their seen sets and histories: a Redis Cluster's memory is
    these times the users."""
    from cascade.serving.app import open_feature_store

    with open_feature_store(config, timeout_s=30.0) as store:
        client = store.client
        kinds: dict[str, int] = defaultdict(int)
        users: set[str] = set()
        seen_items = history_items = 0
        for key in client.scan_iter(match="cascade:*{u:*}*", count=1000):
            text = key.decode()
            user = text[text.index("{u:") : text.index("}") + 1]
            if user not in users and len(users) >= sample_users:
                continue
            users.add(user)
            kind = text[text.index("}") + 2 :].split(":")[0]
            kinds[kind] += int(client.memory_usage(key, samples=0) or 0)
            if kind == "seen":
                seen_items += int(client.scard(key))
            elif kind == "history":
                history_items += int(client.llen(key))
    count = max(len(users), 1)
    return {
        "users_sampled": len(users),
        "bytes_per_user": sum(kinds.values()) / count,
        "bytes_per_user_by_key": {kind: nbytes / count for kind, nbytes in sorted(kinds.items())},
        "seen_items_per_user": seen_items / count,
        "history_items_per_user": history_items / count,
        "bytes_per_seen_item": kinds.get("seen", 0) / max(seen_items, 1),
        "bytes_per_history_item": kinds.get("history", 0) / max(history_items, 1),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["item", "user", "interaction"]  # the item x item matrices are per pair: not on this scale
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(kinds, [report["bytes_per"][k] for k in kinds])
    ax.set_ylabel("bytes in one replica, per …")
    ax.set_title("what a serving replica's memory grows with")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    counts, per = report["counts"], report["bytes_per"]
    lines = [
        "# Replica memory by what it grows with",
        "",
        f"Served models {report['versions']} ({counts['items']:,} items, {counts['users']:,} users, "
        f"{counts['interactions']:,} training interactions; {report['config']}).",
        "",
        "| grows with | bytes each | total here |",
        "|---|---:|---:|",
    ]
    labels = {
        "item": "catalogue item",
        "item pair": "pair of items (item x item matrices)",
        "user": "user the models know",
        "interaction": "training interaction",
    }
    for kind, label in labels.items():
        lines.append(f"| {label} | {per[kind]:,.2f} | {report['bytes'].get(kind, 0) / 2**20:,.1f} MB |")
    lines.append(f"| fixed | | {report['bytes'].get('fixed', 0) / 2**20:,.1f} MB |")
    lines += [
        "",
        "Parts holding 1% of their kind or more:",
        "",
        "| grows with | part | bytes each |",
        "|---|---|---:|",
    ]
    divisor = {"item": counts["items"], "item pair": counts["items"] ** 2, "user": counts["users"]}
    divisor |= {"interaction": counts["interactions"], "fixed": 1}
    for kind in (*labels, "fixed"):
        for row in report["largest"].get(kind, []):
            lines.append(f"| {kind} | `{row['path']}` | {row['bytes'] / max(divisor[kind], 1):,.2f} |")
    store = report.get("store")
    if store:
        lines += [
            "",
            f"Feature store (Redis `MEMORY USAGE` of every key of {store['users_sampled']:,} users): "
            f"{store['bytes_per_user']:,.0f} bytes per user, with {store['seen_items_per_user']:.0f} seen "
            f"items ({store['bytes_per_seen_item']:.1f} bytes each) and "
            f"{store['history_items_per_user']:.0f} history entries "
            f"({store['bytes_per_history_item']:.1f} bytes each) per user on average; by key: "
            + ", ".join(f"{kind} {nbytes:,.0f}" for kind, nbytes in store["bytes_per_user_by_key"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report(report, json_path, plot, summary)
