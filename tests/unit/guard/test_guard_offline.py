"""Shilling attacks, profile features and the scan, on a small table with MovieLens's shape: users rate
popular items far more often than obscure ones, each with a taste of their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.data.dataset import Dataset
from cascade.data.exclusions import Exclusions, GuardExclusions
from cascade.guard.attacks import ATTACK_KINDS, AttackSpec, inject_attack, pick_targets
from cascade.guard.detector import ShillingDetector, scan
from cascade.guard.features import PROFILE_FEATURES, ItemReference, profile_features

RANGE = (1.0, 5.0)


def _genuine(users: int = 300, items: int = 400, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    quality = rng.normal(3.5, 0.5, size=items)
    rows = []
    for user in range(1, users + 1):
        count = int(rng.integers(20, 80))
        rated = rng.choice(items, size=count, replace=False, p=popularity / popularity.sum()) + 1
        bias = rng.normal(0, 0.4)
        ratings = np.clip(np.round(quality[rated - 1] + bias + rng.normal(0, 0.8, count)), 1, 5)
        rows += [
            (user, int(i), float(r), 1_000 + user * 100 + k) for k, (i, r) in enumerate(zip(rated, ratings))
        ]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    user_table = pd.DataFrame(
        {"user_id": np.arange(1, users + 1), "gender": "F", "age": 30, "occupation": "x", "zip_code": "1"}
    )
    genres = ["Drama", "Comedy", "Action", "Horror"]
    item_table = pd.DataFrame({"item_id": np.arange(1, items + 1), "title": "t",
                               "genres": [genres[i % 4] for i in range(items)], "year": 1990})  # fmt: skip
    return Dataset.create("toy", interactions, user_table, item_table)


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return _genuine()


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_each_attack_adds_fake_profiles_that_push_the_targets(toy, kind):
    targets = pick_targets(toy.interactions, 2, seed=3)
    spec = AttackSpec(kind, 0.05, 0.05, targets, seed=1)
    attacked = inject_attack(toy.interactions, toy.users, toy.items, spec, RANGE)
    assert len(attacked.fake_users) == 15 and not set(attacked.fake_users) & set(toy.users["user_id"])
    pd.testing.assert_frame_equal(attacked.interactions.iloc[: len(toy.interactions)], toy.interactions)
    fake_rows = attacked.interactions[attacked.interactions["user_id"].isin(attacked.fake_users)]
    on_targets = fake_rows[fake_rows["item_id"].isin(targets)]
    assert len(on_targets) == 2 * 15 and (on_targets["rating"] == 5.0).all()
    per_profile = fake_rows.groupby("user_id").size()
    selected = 5 if kind in ("bandwagon", "segment") else 0
    assert (per_profile == 2 + selected + 20).all()  # targets, selected items, 5% of 400 fillers
    assert fake_rows["rating"].between(1, 5).all() and set(attacked.users["user_id"]) >= set(
        attacked.fake_users
    )
    if kind == "segment":  # fillers at the bottom
        assert (fake_rows.groupby("user_id")["rating"].apply(lambda r: (r == 1.0).sum()) == 20).all()


def test_text_ids_get_unused_text_fakes(toy):
    users = toy.users.assign(user_id=toy.users["user_id"].map(lambda u: f"c{u}"))
    interactions = toy.interactions.assign(user_id=toy.interactions["user_id"].map(lambda u: f"c{u}"))
    attacked = inject_attack(interactions, users, toy.items, AttackSpec("random", 0.01, 0.02, (5,), 0), RANGE)
    assert all(isinstance(u, str) and not u.startswith("c") for u in attacked.fake_users)


def test_profile_features_by_hand():
    table = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [10, 11, 12, 10, 11],
                          "rating": [5.0, 1.0, 3.0, 5.0, 4.0]})  # fmt: skip
    features = profile_features(table, ItemReference.of(table, RANGE))
    assert list(features.columns) == list(PROFILE_FEATURES) and features.index.tolist() == [1, 2]
    one = features.loc[1]
    assert one["share_top"] == pytest.approx(1 / 3) and one["share_bottom"] == pytest.approx(1 / 3)
    assert one["fmtd"] == pytest.approx(5.0 - 2.0)  # top-rated 5 against the rest's mean (1 + 3) / 2
    # item means: 10 -> 5, 11 -> 2.5, 12 -> 3; |deviations| 0, 1.5, 0 over raters 2, 2, 1
    assert one["mean_abs_deviation"] == pytest.approx(0.5) and one["rdma"] == pytest.approx(0.75 / 3)
    assert one["mean_log_popularity"] == pytest.approx(np.log1p([2, 2, 1]).mean())


def test_the_scan_flags_a_coordinated_attack_and_no_genuine_user(toy):
    clean = scan(toy.interactions, toy.users, toy.items, RANGE, seed=0, screen=0.2, folds=3)
    assert clean.flagged.sum() <= 1
    targets = pick_targets(toy.interactions, 1, seed=9)
    spec = AttackSpec("average", 0.05, 0.05, targets, 4)
    attacked = inject_attack(toy.interactions, toy.users, toy.items, spec, RANGE)
    result = scan(attacked.interactions, attacked.users, toy.items, RANGE, seed=0, screen=0.2, folds=3)
    flagged = set(result.flagged[result.flagged].index)
    fakes = set(attacked.fake_users.tolist())
    assert len(flagged & fakes) >= 0.9 * len(fakes) and len(flagged & fakes) >= 0.9 * len(flagged)
    reasons = result.reasons()
    assert set(reasons["pushed_item"]) == {str(targets[0])} and reasons["score"].is_monotonic_decreasing


def test_a_published_detector_reads_back_and_scores_alike(toy, tmp_path):
    detector = ShillingDetector.fit(toy.interactions, toy.users, toy.items, RANGE, seed=0)
    detector.write(tmp_path)
    again = ShillingDetector.read(tmp_path, integer_ids=True)
    fake = pd.DataFrame({"user_id": 0, "item_id": np.arange(150, 230), "rating": 5.0})
    assert again.score_profiles(fake).iloc[0] == pytest.approx(detector.score_profiles(fake).iloc[0])
    genuine = toy.interactions[toy.interactions["user_id"] == 1]
    assert detector.score_profiles(genuine).iloc[0] < 0.5 < detector.score_profiles(fake).iloc[0]


def test_exclusions_leave_users_out_of_the_data_set_and_change_its_fingerprint(toy, tmp_path):
    folder = toy.save(tmp_path / "toy")
    before = Dataset.fingerprint_of(folder)
    Exclusions(GuardExclusions(users=("3", "7"), scanned="x")).save(folder)
    loaded = Dataset.load(folder)
    assert (
        not loaded.interactions["user_id"].isin([3, 7]).any()
        and not loaded.users["user_id"].isin([3, 7]).any()
    )
    assert len(Dataset.load(folder, exclusions=False).users) == 300
    assert Dataset.fingerprint_of(folder) != before == Dataset.fingerprint_of(folder, exclusions=False)
    toy.save(folder)  # fetching the data set again keeps what was excluded
    assert Exclusions.load(folder).users == {"3", "7"}
