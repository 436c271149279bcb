"""Every offline job gives the same results on every engine: in this process as one piece (the default),
in this process cut into parts, and on a real local Ray. Synthetic data sets here, with integer and with
string ids; ML-100K and its trained models in tests/e2e/test_offline_engines.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cascade.config import AppConfig
from cascade.core.engines import LOCAL, LocalEngine, OfflineConfig, open_engine
from cascade.customers.indicators import ENGAGEMENT_INDICATORS, PLATFORM_INDICATORS, PURCHASE_INDICATORS
from cascade.customers.log import CustomerLog
from cascade.data.synthetic import generate
from cascade.data.synthetic_commerce import generate_commerce
from cascade.recall.channels import RecallChannels, SegmentPopularity
from cascade.recall.training import embed_items, embed_users
from cascade.recall.two_tower import TwoTowerModel, TwoTowerSpec
from cascade.training.prepare import prepare_dataset
from cascade.training.ranking import CandidateSources, labelled_candidates
from tests.offline_jobs import (
    assert_same_arrays,
    assert_same_examples,
    assert_same_indicators,
    rules_on,
    statistics_on,
)

DAY = 86_400.0


@pytest.fixture(params=["local, 5 parts", "ray, 4 parts"])
def engine(request):
    if request.param.startswith("ray"):
        return request.getfixturevalue("ray_engine")
    return LocalEngine(partitions=5)


@pytest.fixture(scope="module", params=[False, True], ids=["integer ids", "string ids"])
def prepared(request):
    dataset = generate(300, 400, 9_000, seed=5, string_ids=request.param)
    config = AppConfig.model_validate(
        {"ranking": {"training_candidates": 40}, "recall": {"embedding_dim": 16, "hidden_dim": 32}}
    )
    return config, prepare_dataset(config, dataset, "synthetic-test"), dataset


@pytest.fixture(scope="module")
def model(prepared) -> TwoTowerModel:
    """An untrained two-tower model: the jobs' arithmetic is the same for any weights."""
    config, prep, _ = prepared
    torch.manual_seed(0)
    spec = TwoTowerSpec.from_schema(
        prep.schema,
        history_length=config.features.history_length,
        embedding_dim=config.recall.embedding_dim,
        hidden_dim=config.recall.hidden_dim,
        history_pooling=config.recall.history_pooling,
        history_heads=config.recall.history_heads,
    )
    return TwoTowerModel(spec).eval()


def test_item_statistics_and_rules_are_the_same_whatever_the_parts(engine, prepared):
    _, prep, _ = prepared
    train = prep.split.train
    expected = statistics_on(LOCAL, prep.schema, train)
    assert expected.counts.sum() == len(train)
    assert_same_arrays(statistics_on(engine, prep.schema, train), expected, "statistics")
    sequences = prep.sequences(train)
    rules = rules_on(LOCAL, sequences, prep.schema.num_items)
    assert rules.num_rules > 100
    assert_same_arrays(rules_on(engine, sequences, prep.schema.num_items), rules, "rules")


def test_item_and_user_embeddings_are_the_same_whatever_the_parts(engine, prepared, model):
    _, prep, _ = prepared
    known = np.arange(prep.schema.num_items) % 3 > 0  # some items embedded from content alone
    # batches of 64 rows, so that the catalogue is several batches and parts hold several each
    expected = embed_items(model, prep.items, known, batch_size=64)
    assert expected.shape == (prep.schema.num_items - 1, 16)
    np.testing.assert_array_equal(embed_items(model, prep.items, known, 64, engine), expected)
    rows = np.arange(1, prep.schema.num_users)
    history = prep.sequences(prep.split.train).latest_history(rows, 50)
    users = embed_users(model, prep.users, rows, history, batch_size=64)
    np.testing.assert_array_equal(embed_users(model, prep.users, rows, history, 64, engine), users)


def test_customer_indicators_are_the_same_whatever_the_parts(engine, prepared):
    _, _, dataset = prepared
    commerce = generate_commerce(dataset, seed=5)
    ratings_log = CustomerLog.of_dataset(dataset)
    platform_log = CustomerLog.of_transactions(commerce, dataset)
    purchases_log = CustomerLog("shop", purchases=platform_log.purchases)
    as_of = float(np.quantile(ratings_log.events["timestamp"], 0.7))
    for log, columns in (
        (ratings_log, ENGAGEMENT_INDICATORS),
        (platform_log, PLATFORM_INDICATORS),
        (purchases_log, PURCHASE_INDICATORS),
    ):
        table = assert_same_indicators(engine, log, as_of)
        assert list(table.columns) == list(columns) and len(table) > 100
    # the population's typical values fill what a customer lacks, over all parts: ratings only from
    # customers in one part, and most ages unknown
    ratings = platform_log.ratings
    few = ratings[ratings["customer_id"].isin(ratings["customer_id"].unique()[:5])]
    profiles = platform_log.profiles.assign(age=np.where(np.arange(len(platform_log.profiles)) % 4, -1, 30))
    sparse = CustomerLog(
        "shop", platform_log.purchases, platform_log.sessions, few, profiles, platform_log.item_genres
    )
    filled = assert_same_indicators(engine, sparse, as_of)
    assert (filled["age"] > 0).all() and filled["mean_rating_given"].notna().all()


def test_ranking_examples_are_the_same_whatever_the_parts(engine, prepared, model):
    config, prep, _ = prepared
    inner = prep.inner_split(config.data.holdout_fraction)
    sequences = prep.sequences(inner.train)
    sources = CandidateSources(
        model=model,
        channels=RecallChannels(
            rules_on(LOCAL, sequences, prep.schema.num_items),
            SegmentPopularity.count(
                prep.users.gender[sequences.user],
                prep.users.age[sequences.user],
                sequences.item,
                prep.schema.num_items,
                20,
            ),
            config.recall,
        ),
        statistics=statistics_on(LOCAL, prep.schema, inner.train),
        ratings=None,
        preferences=None,
    )
    # searches of 16 users, so that the parts hold several each
    expected = labelled_candidates(config, prep, inner, sources, search_chunk=16)
    assert len(expected.users) > 20 and expected.labels.sum() > 0
    got = labelled_candidates(config, prep, inner, sources, engine=engine, search_chunk=16)
    assert_same_examples(got, expected)


def test_engines_come_from_the_config_and_ray_refuses_a_part_it_lost(ray_engine):
    assert isinstance(open_engine(OfflineConfig()), LocalEngine)
    with pytest.raises(ValueError, match="engine"):
        OfflineConfig(engine="spark")
    # a part that does not arrive whole is refused, not computed on what arrived
    from cascade.core.engines import ray_data

    frame = pd.DataFrame({"x": np.arange(4), ray_data._PART: np.zeros(4, dtype=np.int64)})
    with pytest.raises(RuntimeError, match="part 0 arrived with 4 of its 5 rows"):
        ray_data._run_parts({c: frame[c].to_numpy() for c in frame}, [ray_engine._ray.put(_Echo())], [5])


class _Echo:
    name = "echo"

    def run_part(self, part):
        return part
