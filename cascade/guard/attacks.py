"""The classic shilling attacks as data: fake profiles that push target items, added to an interaction table.

Each fake profile rates every target at the scale's top, and a filler of ``filler_share`` of the catalogue
drawn at random:

- random: fillers rated around the global mean (normal with the global standard deviation);
- average: fillers rated around each filler item's own mean (normal with its standard deviation);
- bandwagon: also rates the most popular items at the top, fillers as in random;
- segment: also rates the target's segment (the most popular items sharing its first genre) at the top,
  fillers at the bottom.

Fake users take demographics drawn from genuine users and timestamps inside the table's time span, so
neither gives them away; what tells them apart must be how they rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ATTACK_KINDS = ("random", "average", "bandwagon", "segment")
# items a bandwagon or segment profile rates at the top beside its targets
SELECTED_ITEMS = 5


@dataclass(frozen=True)
class AttackSpec:
    """One attack: ``kind`` of ATTACK_KINDS, ``fake_share`` fake profiles per genuine user, each rating
    ``filler_share`` of the catalogue as filler (with ``filler_share_max``: a share drawn per profile
    between the two), pushing ``targets`` (item ids)."""

    kind: str
    fake_share: float
    filler_share: float
    targets: tuple
    seed: int
    filler_share_max: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"attack kind must be one of {ATTACK_KINDS}, got {self.kind!r}")
        if not 0 < self.fake_share <= 1 or not 0 < self.filler_share < 1:
            raise ValueError("fake_share must be in (0, 1] and filler_share in (0, 1)")
        if self.filler_share_max is not None and not self.filler_share <= self.filler_share_max < 1:
            raise ValueError("filler_share_max must be in [filler_share, 1)")
        if not self.targets:
            raise ValueError("an attack needs at least one target item")


@dataclass(frozen=True)
class Attacked:
    """A table with an attack in it: its interactions and users, and the fake users' ids."""

    interactions: pd.DataFrame
    users: pd.DataFrame
    fake_users: np.ndarray


@dataclass(frozen=True)
class RatingTable:
    """What an attacker knows of a rating table (per item: mean, standard deviation, raters; overall: mean,
    standard deviation, time span) and the genuine users it has."""

    item_mean: pd.Series
    item_std: pd.Series
    popularity: pd.Series  # item id -> raters, most rated first
    mean: float
    std: float
    time_span: tuple[int, int]
    users: int

    @classmethod
    def of(cls, interactions: pd.DataFrame) -> RatingTable:
        by_item = interactions.groupby("item_id")["rating"]
        ratings = interactions["rating"].to_numpy(dtype=np.float64)
        stamps = interactions["timestamp"].to_numpy()
        return cls(
            item_mean=by_item.mean().astype(np.float64),
            item_std=by_item.std().fillna(0.0).astype(np.float64),
            popularity=by_item.size().sort_values(ascending=False, kind="stable"),
            mean=float(ratings.mean()) if len(ratings) else 0.0,
            std=float(ratings.std()) if len(ratings) else 0.0,
            time_span=(int(stamps.min()), int(stamps.max())) if len(stamps) else (0, 1),
            users=int(interactions["user_id"].nunique()),
        )


def fake_user_ids(existing: np.ndarray, count: int) -> np.ndarray:
    """``count`` user ids unused in ``existing``, of the same kind (integers past the largest, or text)."""
    if existing.dtype.kind in "iu":
        start = int(existing.max()) + 1 if len(existing) else 1
        return np.arange(start, start + count, dtype=np.int64)
    taken = set(existing.tolist())
    ids = [f"guard-fake-{i}" for i in range(count * 2 + len(taken)) if f"guard-fake-{i}" not in taken]
    return np.array(ids[:count], dtype=object)


def inject_attack(
    interactions: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    spec: AttackSpec,
    rating_range: tuple[float, float],
) -> Attacked:
    """``interactions`` and ``users`` with ``spec``'s fake profiles added (genuine rows unchanged, first)."""
    fake_rows, fake_users = fake_profiles(RatingTable.of(interactions), users, items, spec, rating_range)
    return Attacked(
        interactions=pd.concat([interactions, fake_rows], ignore_index=True),
        users=pd.concat([users, fake_users], ignore_index=True),
        fake_users=fake_users["user_id"].to_numpy(),
    )


def fake_profiles(
    table: RatingTable,
    users: pd.DataFrame,
    items: pd.DataFrame,
    spec: AttackSpec,
    rating_range: tuple[float, float],
    max_profiles: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``spec``'s fake profiles against ``table``: their interactions and their user rows (ids unused in
    ``users``); at most ``max_profiles`` of them when given."""
    rng = np.random.default_rng(spec.seed)
    low, high = rating_range
    count = max(1, round(spec.fake_share * table.users))
    if max_profiles is not None:
        count = min(count, max_profiles)
    fakes = fake_user_ids(users["user_id"].to_numpy(), count)
    item_ids = items["item_id"].to_numpy()
    targets = np.array(spec.targets, dtype=item_ids.dtype)
    selected = _selected_items(spec, items, table.popularity, targets)
    candidates = np.setdiff1d(item_ids, np.concatenate([targets, selected]))
    shares = (
        np.full(count, spec.filler_share)
        if spec.filler_share_max is None
        else rng.uniform(spec.filler_share, spec.filler_share_max, size=count)
    )
    filler_counts = np.maximum(1, np.round(shares * len(item_ids)).astype(int))
    rows_user, rows_item, rows_rating = [], [], []
    for fake, filler_count in zip(fakes, filler_counts):
        fillers = rng.choice(candidates, size=min(filler_count, len(candidates)), replace=False)
        if spec.kind == "average":
            means = table.item_mean.reindex(fillers).fillna(table.mean).to_numpy()
            stds = table.item_std.reindex(fillers).fillna(table.std).to_numpy()
            filler_ratings = rng.normal(means, stds)
        elif spec.kind == "segment":
            filler_ratings = np.full(len(fillers), low)
        else:
            filler_ratings = rng.normal(table.mean, table.std, size=len(fillers))
        profile_items = np.concatenate([targets, selected, fillers])
        profile_ratings = np.concatenate([np.full(len(targets) + len(selected), high), filler_ratings])
        rows_user.append(np.full(len(profile_items), fake, dtype=fakes.dtype))
        rows_item.append(profile_items)
        rows_rating.append(np.clip(np.round(profile_ratings), low, high))
    # each fake profile rates in one sitting, as genuine MovieLens users mostly did: minutes apart
    t_low, t_high = table.time_span
    starts = rng.integers(t_low, max(t_high - 86_400, t_low + 1), size=len(fakes))
    stamps = np.concatenate(
        [start + np.sort(rng.integers(0, 3_600, size=len(r))) for start, r in zip(starts, rows_item)]
    )
    fake_rows = pd.DataFrame(
        {
            "user_id": np.concatenate(rows_user),
            "item_id": np.concatenate(rows_item).astype(item_ids.dtype),
            "rating": np.concatenate(rows_rating).astype(np.float32),
            "timestamp": stamps.astype(np.int64),
        }
    )
    donors = users.sample(n=len(fakes), replace=True, random_state=spec.seed).reset_index(drop=True)
    donors["user_id"] = fakes
    return fake_rows, donors[users.columns]


def _selected_items(
    spec: AttackSpec, items: pd.DataFrame, popularity: pd.Series, targets: np.ndarray
) -> np.ndarray:
    """The items a bandwagon or segment profile rates at the top beside the targets (none otherwise)."""
    dtype = items["item_id"].to_numpy().dtype
    if spec.kind == "bandwagon":
        ranked = popularity.index.to_numpy()
    elif spec.kind == "segment":
        genres = items.set_index("item_id")["genres"]
        first = str(genres.get(targets[0], "")).split("|")[0]
        same = genres.index[genres.str.split("|").str[0] == first] if first else genres.index[:0]
        ranked = popularity.reindex(same).dropna().sort_values(ascending=False).index.to_numpy()
    else:
        return np.zeros(0, dtype=dtype)
    ranked = ranked[~np.isin(ranked, targets)]
    return ranked[:SELECTED_ITEMS].astype(dtype)


def pick_targets(interactions: pd.DataFrame, count: int, seed: int) -> tuple:
    """``count`` items to push, as the attack literature picks them: rated, but by few (between the 20th and
    the 50th percentile of popularity), so that a push shows."""
    popularity = interactions["item_id"].value_counts()
    low, high = np.quantile(popularity.to_numpy(), [0.2, 0.5])
    pool = popularity.index[(popularity >= max(low, 2)) & (popularity <= max(high, 3))].to_numpy()
    if len(pool) < count:
        pool = popularity.index.to_numpy()
    rng = np.random.default_rng(seed)
    return tuple(v.item() if hasattr(v, "item") else v for v in rng.choice(pool, size=count, replace=False))
