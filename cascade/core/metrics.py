"""Top-K metrics with binary relevance, averaged over users that have at least one positive."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def recall_at_k(ranked: np.ndarray, positives: np.ndarray, k: int) -> float:
    """|top-k ∩ positives| / |positives|."""
    if len(positives) == 0:
        raise ValueError("recall is undefined without positives")
    return float(np.isin(ranked[:k], positives).sum() / len(positives))


def ndcg_at_k(ranked: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Binary-relevance NDCG; the ideal list puts min(k, |positives|) hits first."""
    if len(positives) == 0:
        raise ValueError("NDCG is undefined without positives")
    hits = np.isin(ranked[:k], positives).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(positives))].sum()
    return float((hits * discounts[: len(hits)]).sum() / ideal)


def evaluate_rankings(
    rankings: Mapping[int, np.ndarray],
    positives: Mapping[int, np.ndarray],
    recall_ks: Iterable[int] = (10, 50, 100),
    ndcg_ks: Iterable[int] = (10,),
    catalogue_size: int | None = None,
    coverage_k: int | None = None,
) -> dict[str, float]:
    """Mean metrics over users in ``positives``; a user with no ranking counts as all misses.

    ``coverage`` is the share of the catalogue shown in some user's top ``coverage_k`` (default: the
    largest k asked for)."""
    recall_ks, ndcg_ks = list(recall_ks), list(ndcg_ks)
    sums = {f"recall@{k}": 0.0 for k in recall_ks} | {f"ndcg@{k}": 0.0 for k in ndcg_ks}
    shown: set[int] = set()
    empty = np.zeros(0, dtype=np.int64)
    for user, pos in positives.items():
        ranked = np.asarray(rankings.get(user, empty))
        for k in recall_ks:
            sums[f"recall@{k}"] += recall_at_k(ranked, pos, k)
        for k in ndcg_ks:
            sums[f"ndcg@{k}"] += ndcg_at_k(ranked, pos, k)
        shown.update(ranked[: coverage_k or max(recall_ks + ndcg_ks)].tolist())
    users = max(len(positives), 1)
    result = {name: value / users for name, value in sums.items()}
    result["users"] = float(len(positives))
    if catalogue_size:
        result["coverage"] = len(shown) / catalogue_size
    return result


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (DIN paper): each group's AUC weighted by its size, over groups with both classes.
    labels, scores, groups: (N,); NaN when no group has both classes."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(np.asarray(groups)[order])) + 1
    total, weight = 0.0, 0
    for rows in np.split(order, bounds):
        positives = labels[rows].sum()
        if 0 < positives < len(rows):
            total += auc(labels[rows], np.asarray(scores)[rows]) * len(rows)
            weight += len(rows)
    return total / weight if weight else float("nan")


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (N,) against 0/1 labels (N,)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def beyond_accuracy(
    rankings: Mapping[int, np.ndarray],
    vectors_of,
    genres: np.ndarray,
    popularity: np.ndarray,
    population: int,
    k: int = 10,
) -> dict[str, float]:
    """What a list offers besides hits, averaged over users' top ``k``:

    - ``intra_list_diversity@k``: mean pairwise cosine distance (1 - cosine) of the items' vectors;
    - ``genre_entropy@k``: Shannon entropy (bits) of the genres the items carry, each genre of each item once;
    - ``novelty@k``: mean -log2 of each item's share of ``population`` (users) who interacted with it.

    ``vectors_of``: item indices (C,) -> (C, D) unit vectors; ``genres``: (N, G) genre ids, 0 = none;
    ``popularity``: (N,) interaction counts."""
    diversity, entropy, novelty = [], [], []
    for ranked in rankings.values():
        top = np.asarray(ranked[:k], dtype=np.int64)
        if len(top) == 0:
            continue
        if len(top) > 1:
            vectors = vectors_of(top)
            similarity = vectors @ vectors.T
            pairs = np.triu_indices(len(top), 1)
            diversity.append(float(np.mean(1.0 - similarity[pairs])))
        carried = genres[top].ravel()
        counts = np.bincount(carried[carried > 0])
        shares = counts[counts > 0] / max(counts.sum(), 1)
        entropy.append(float(-(shares * np.log2(shares)).sum()))
        share = np.maximum(popularity[top], 1.0) / max(population, 1)
        novelty.append(float(np.mean(-np.log2(np.minimum(share, 1.0)))))
    return {
        f"intra_list_diversity@{k}": float(np.mean(diversity)) if diversity else 0.0,
        f"genre_entropy@{k}": float(np.mean(entropy)) if entropy else 0.0,
        f"novelty@{k}": float(np.mean(novelty)) if novelty else 0.0,
    }
