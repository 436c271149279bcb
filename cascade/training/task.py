"""What ranking a user's unseen items is judged on, for one split: every offline stage's evaluation task."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from cascade.config import AppConfig
from cascade.core.arrays import rows_by_key
from cascade.core.engines import LOCAL, OfflineEngine
from cascade.core.metrics import evaluate_rankings
from cascade.core.schema import FeatureSchema, id_array, native_id
from cascade.data.split import TemporalSplit
from cascade.recall.channels import keep_unblocked
from cascade.recall.index import exact_search
from cascade.recall.training import InteractionSequences, embed_items, embed_users
from cascade.recall.two_tower import TwoTowerModel
from cascade.training.prepare import Prepared

EVAL_RECALL_KS = (10, 50, 100, 500)
COVERAGE_K = 100  # catalogue coverage counts the items shown in each user's top 100


@dataclass(frozen=True)
class RecallTask:
    """One split's training part and its positives.

    users: external ids (U,); rows: their user-table rows (U,); history: (U, L) latest training items;
    seen: user id -> training item indices; positives: user id -> held-out positive item indices;
    known: (num_items,) bool, items with training interactions."""

    users: np.ndarray
    rows: np.ndarray
    history: np.ndarray
    seen: dict[int, np.ndarray]
    positives: dict[int, np.ndarray]
    known: np.ndarray
    sequences: InteractionSequences

    @classmethod
    def of(
        cls, prep: Prepared, split: TemporalSplit, config: AppConfig, max_users: int | None = None
    ) -> RecallTask:
        schema = prep.schema
        positives = _positive_indices(schema, split, config.data.positive_min_rating)
        users = id_array(list(positives))
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng(config.seed).choice(users, max_users, replace=False))
            positives = {native_id(u): positives[native_id(u)] for u in users}
        sequences = prep.sequences(split.train)
        rows = schema.user_index(users)
        return cls(
            users=users,
            rows=rows,
            history=sequences.latest_history(rows, config.features.history_length),
            seen=_seen_indices(schema, split.train),
            positives=positives,
            known=np.bincount(sequences.item, minlength=schema.num_items) > 0,
            sequences=sequences,
        )

    def of_own_users(self) -> RecallTask:
        """This task with the training sets of its own users only and without its sequences: what ranking
        its users reads, and a job ships to each worker."""
        seen = {user: self.seen[user] for user in self.users.tolist() if user in self.seen}
        return replace(self, seen=seen, sequences=None)  # type: ignore[arg-type]

    def embed(
        self, model: TwoTowerModel, prep: Prepared, engine: OfflineEngine = LOCAL
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item embeddings (N, D) of item indices 1..N and this task's user queries (U, D)."""
        return embed_items(model, prep.items, self.known, engine=engine), embed_users(
            model, prep.users, self.rows, self.history, engine=engine
        )

    def rankings(
        self,
        item_embeddings: np.ndarray,
        queries: np.ndarray,
        k: int,
        chunk: int = 2048,
        positions: np.ndarray | None = None,
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Exact two-tower top-k of unseen items per user -> user id: (item indices, scores); of the users
        at ``positions`` (P,) only when given, ``queries`` still being every user's (U, D)."""
        out = {}
        nothing = np.zeros(0, dtype=np.int64)
        if positions is not None:
            all_users, queries = self.users[positions], queries[positions]
        else:
            all_users = self.users
        for begin in range(0, len(all_users), chunk):
            users = all_users[begin : begin + chunk]
            # widen by the longest seen list in this chunk, so k unseen items remain for everyone
            longest = max((len(self.seen.get(native_id(u), ())) for u in users), default=0)
            scores, found = exact_search(item_embeddings, queries[begin : begin + chunk], k + longest)
            for user, ranked, ranked_scores in zip(users.tolist(), found, scores):
                keep = keep_unblocked(ranked, self.seen.get(user, nothing), k)
                out[user] = (ranked[keep], ranked_scores[keep])
        return out

    def evaluate(self, rankings: dict[int, np.ndarray], num_items: int) -> dict[str, float]:
        return evaluate_rankings(rankings, self.positives, EVAL_RECALL_KS, (10,), num_items - 1, COVERAGE_K)

    def recall_at_100(self, model: TwoTowerModel, prep: Prepared) -> float:
        ranked = self.rankings(*self.embed(model, prep), 100)
        return evaluate_rankings({u: r for u, (r, _) in ranked.items()}, self.positives, (100,), ())[
            "recall@100"
        ]


def _seen_indices(schema: FeatureSchema, interactions: pd.DataFrame) -> dict[int, np.ndarray]:
    return rows_by_key(
        interactions["user_id"].to_numpy(), schema.item_index(interactions["item_id"].to_numpy())
    )


def _positive_indices(
    schema: FeatureSchema, split: TemporalSplit, min_rating: float
) -> dict[int, np.ndarray]:
    liked = split.test[split.test["rating"] >= min_rating]
    return rows_by_key(liked["user_id"].to_numpy(), schema.item_index(liked["item_id"].to_numpy()))
