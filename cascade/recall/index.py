"""FAISS item index over two-tower embeddings (inner product), always checked against exact search.

Row r of the index holds catalogue item index r + 1 (index 0 is padding in the feature schema). The index
type comes from a FAISS factory string; its search-time knob (``nprobe`` for IVF, ``efSearch`` for HNSW) is
tuned at build time to the smallest value that reaches a target recall@k against exact search, and saved
with the index.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

try:
    import faiss
except ImportError as exc:  # neither extra installed: say which to pick rather than fail deep inside
    raise ImportError(
        "FAISS is not installed: pip install 'cascade-recsys[cpu]' (or '[gpu]' on a CUDA machine)"
    ) from exc
import numpy as np

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "item_embeddings.npy"
META_FILE = "index.json"


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k: (Q, D) x (N, D) -> scores (Q, k), item indices (Q, k).

    ``faiss.knn`` runs the same kernel as ``IndexFlatIP.search`` (equal results) on the caller's array,
    where an index would first copy the catalogue into itself: 2.5 GB more at 10M items of d = 64."""
    scores, rows = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(embeddings, dtype=np.float32),
        min(k, len(embeddings)),
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return scores, rows + 1


def recall_of(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of each exact top-k row found in the approximate row, over all rows: (Q, k) x (Q, k)."""
    hits = sum(len(np.intersect1d(a[a > 0], e)) for a, e in zip(approx, exact))
    return hits / max(exact.size, 1)


def tunable_parameter(index: faiss.Index) -> tuple[str, list[int]] | None:
    """The search-time knob of an index and the values worth trying, smallest (fastest) first."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        values = sorted({min(2**p, ivf.nlist) for p in range(0, 16)})
        return "nprobe", values
    if hasattr(faiss.downcast_index(index), "hnsw"):
        return "efSearch", [16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096]
    return None


@dataclass(frozen=True)
class TuningResult:
    parameter: str | None
    value: int | None
    recall: float  # recall@k against exact at the chosen value
    k: int
    curve: dict[int, float]  # every value tried -> recall@k


class ItemIndex:
    """A FAISS index plus the embeddings it was built from (for exact checks and similar-item lookups)."""

    def __init__(
        self,
        index: faiss.Index,
        embeddings: np.ndarray,
        factory: str,
        search_params: dict[str, int] | None = None,
    ):
        self.cpu_index = index
        self.embeddings = embeddings
        self.factory = factory
        self.search_params: dict[str, int] = {}
        self._search_index = index
        self.on_gpu = False
        if gpu_available():
            try:
                self._search_index = faiss.index_cpu_to_all_gpus(index)
                self.on_gpu = True
                logger.info("FAISS index moved to %d GPU(s)", faiss.get_num_gpus())
            except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
                logger.warning("FAISS index %s stays on the CPU: %s", factory, exc)
        for name, value in (search_params or {}).items():
            self.set_search_parameter(name, value)

    @property
    def size(self) -> int:
        return self.cpu_index.ntotal

    @property
    def dim(self) -> int:
        return self.cpu_index.d

    @classmethod
    def build(cls, embeddings: np.ndarray, factory: str, seed: int) -> ItemIndex:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed  # FAISS has no global seed: its k-means takes one
            # 64 points per centroid is plenty for k-means and keeps training on millions of items fast.
            ivf.cp.max_points_per_centroid = 64
        if not index.is_trained:
            index.train(embeddings)
        index.add(embeddings)
        return cls(index, embeddings, factory)

    def set_search_parameter(self, name: str, value: int) -> None:
        """Set nprobe / efSearch. Not safe while searches run: done at build or load time only."""
        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        space.set_index_parameter(self._search_index, name, int(value))
        if self._search_index is not self.cpu_index:
            faiss.ParameterSpace().set_index_parameter(self.cpu_index, name, int(value))
        self.search_params[name] = int(value)

    def tune(self, queries: np.ndarray, k: int, target_recall: float) -> TuningResult:
        """Smallest nprobe / efSearch reaching ``target_recall`` at recall@k on ``queries`` (Q, D); the
        largest value tried when none does (the caller decides whether that is good enough)."""
        k = min(k, self.size)
        _, exact = exact_search(self.embeddings, queries, k)
        knob = tunable_parameter(self.cpu_index)
        if knob is None:
            return TuningResult(None, None, recall_of(self.search(queries, k)[1], exact), k, {})
        name, values = knob
        curve: dict[int, float] = {}
        for value in values:
            self.set_search_parameter(name, value)
            curve[value] = recall_of(self.search(queries, k)[1], exact)
            if curve[value] >= target_recall:
                break
        logger.info("tuned %s of %s: %s", name, self.factory, {v: round(r, 4) for v, r in curve.items()})
        return TuningResult(name, value, curve[value], k, curve)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> scores (Q, k), item indices (Q, k); missing results have index 0."""
        k = min(k, self.size)
        scores, rows = self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, rows + 1, 0)

    def recall_against_exact(self, queries: np.ndarray, k: int) -> float:
        """Share of the exact top-k that this index returns, over the given queries."""
        _, approx = self.search(queries, k)
        _, exact = exact_search(self.embeddings, queries, k)
        return recall_of(approx, exact)

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest to catalogue item index ``item`` (itself excluded) -> items (k,), scores."""
        scores, items = self.search(self.embeddings[item - 1 : item], k + 1)
        keep = (items[0] != item) & (items[0] > 0)
        return items[0][keep][:k], scores[0][keep][:k]

    def save(self, folder: Path) -> None:
        faiss.write_index(self.cpu_index, str(folder / INDEX_FILE))
        np.save(folder / EMBEDDINGS_FILE, self.embeddings, allow_pickle=False)
        meta = {
            "factory": self.factory,
            "dim": self.dim,
            "size": self.size,
            "metric": "inner_product",
            "search_params": self.search_params,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        meta = json.loads((folder / META_FILE).read_text())
        index = faiss.read_index(str(folder / INDEX_FILE))
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        if index.ntotal != len(embeddings) or index.d != meta["dim"]:
            raise ValueError(f"index in {folder} does not match its embeddings")
        return cls(index, embeddings, meta["factory"], meta.get("search_params", {}))


class GrowingIndex:
    """A built ``ItemIndex`` plus items added since, searched exactly beside it: the index of a catalogue
    that grows between trainings (``CatalogueAdmin.UpsertItem``). Item indices 1..base.size are the base's,
    base.size + 1.. the added ones, in order. The added items are few (until the next rebuild), so exact
    search over them costs less than keeping a second FAISS index in step."""

    def __init__(self, base: ItemIndex, added: np.ndarray):
        """added: (M, D) unit vectors of the new items."""
        self.base = base
        self.added = np.ascontiguousarray(added, dtype=np.float32).reshape(-1, base.dim)
        self.embeddings = np.concatenate([base.embeddings, self.added])

    @property
    def size(self) -> int:
        return self.base.size + len(self.added)

    @property
    def dim(self) -> int:
        return self.base.dim

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> scores (Q, k), item indices (Q, k): the base index's and the added items' best,
        merged; missing results have index 0."""
        scores, items = self.base.search(queries, k)
        if not len(self.added):
            return scores, items
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        added_scores = queries @ self.added.T  # (Q, M)
        added_items = np.broadcast_to(
            np.arange(self.base.size + 1, self.size + 1, dtype=items.dtype), added_scores.shape
        )
        merged_scores = np.concatenate([np.where(items > 0, scores, -np.inf), added_scores], axis=1)
        merged_items = np.concatenate([items, added_items], axis=1)
        k = min(k, merged_items.shape[1])
        best = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(merged_scores, best, axis=1)
        top_items = np.take_along_axis(merged_items, best, axis=1)
        return np.where(np.isfinite(top_scores), top_scores, 0).astype(np.float32), np.where(
            np.isfinite(top_scores), top_items, 0
        )

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest to item index ``item`` (itself excluded) -> items (k,), scores."""
        scores, items = self.search(self.embeddings[item - 1 : item], k + 1)
        keep = (items[0] != item) & (items[0] > 0)
        return items[0][keep][:k], scores[0][keep][:k]
