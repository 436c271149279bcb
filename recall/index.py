"""FAISS item index over two-tower embeddings (inner product), always checkable against exact search.

Row r of the index holds catalogue item index r + 1 (index 0 is padding in the feature schema).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "item_embeddings.npy"
META_FILE = "index.json"


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k: (Q, D) x (N, D) -> scores (Q, k), item indices (Q, k)."""
    flat = faiss.IndexFlatIP(embeddings.shape[1])
    flat.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    scores, rows = flat.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(embeddings)))
    return scores, rows + 1


class ItemIndex:
    """A FAISS index plus the embeddings it was built from (for exact checks and similar-item lookups)."""

    def __init__(self, index: faiss.Index, embeddings: np.ndarray, factory: str):
        self.cpu_index = index
        self.embeddings = embeddings
        self.factory = factory
        self._search_index = index
        if gpu_available():
            self._search_index = faiss.index_cpu_to_all_gpus(index)
            logger.info("FAISS index moved to %d GPU(s)", faiss.get_num_gpus())

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
        if not index.is_trained:
            index.train(embeddings)
        index.add(embeddings)
        return cls(index, embeddings, factory)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> scores (Q, k), item indices (Q, k); missing results have index 0."""
        k = min(k, self.size)
        scores, rows = self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, rows + 1, 0)

    def recall_against_exact(self, queries: np.ndarray, k: int) -> float:
        """Share of the exact top-k that this index returns, over the given queries."""
        _, approx = self.search(queries, k)
        _, exact = exact_search(self.embeddings, queries, k)
        hits = sum(len(np.intersect1d(a, e)) for a, e in zip(approx, exact))
        return hits / exact.size

    def save(self, folder: Path) -> None:
        faiss.write_index(self.cpu_index, str(folder / INDEX_FILE))
        np.save(folder / EMBEDDINGS_FILE, self.embeddings, allow_pickle=False)
        meta = {"factory": self.factory, "dim": self.dim, "size": self.size, "metric": "inner_product"}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        meta = json.loads((folder / META_FILE).read_text())
        index = faiss.read_index(str(folder / INDEX_FILE))
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        if index.ntotal != len(embeddings) or index.d != meta["dim"]:
            raise ValueError(f"index in {folder} does not match its embeddings")
        return cls(index, embeddings, meta["factory"])
