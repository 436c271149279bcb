"""On ML-100K with the models the session trained: every offline job run on a local Ray gives exactly what
it gives in this process, and `--engine ray` on the command line does the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from cascade.core.artifacts import ArtifactStore
from cascade.core.engines import LOCAL
from cascade.customers.log import CustomerLog
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.recall.index import EMBEDDINGS_FILE
from cascade.recall.training import embed_items
from cascade.training.prepare import prepare
from cascade.training.ranking import inner_candidate_sources, labelled_candidates
from tests.helpers import PSEUDONYM_KEY
from tests.offline_jobs import (
    assert_same_arrays,
    assert_same_examples,
    assert_same_indicators,
    rules_on,
    statistics_on,
)


def test_every_offline_job_on_ray_gives_what_it_gives_here(config, built, ray_engine):
    prep = prepare(config)
    recall = RecallBundle(config.artifact_store().require(RECALL), config.pseudonyms())
    train = prep.split.train
    assert_same_arrays(
        statistics_on(ray_engine, prep.schema, train), statistics_on(LOCAL, prep.schema, train), "statistics"
    )
    sequences = prep.sequences(train)
    rules = rules_on(LOCAL, sequences, prep.schema.num_items)
    assert rules.num_rules > 1000
    assert_same_arrays(rules_on(ray_engine, sequences, prep.schema.num_items), rules, "rules")

    model, known = recall.two_tower(), recall.popularity() > 0
    # batches of 256: the 1,682 films are seven, so that the four parts hold several each
    catalogue = embed_items(model, recall.items, known, 256)
    np.testing.assert_array_equal(embed_items(model, recall.items, known, 256, ray_engine), catalogue)

    log = CustomerLog.load(config.data.data_dir, "movielens-100k", config.pseudonyms())
    as_of = float(np.quantile(log.events["timestamp"], 0.8))
    assert len(assert_same_indicators(ray_engine, log, as_of)) > 700

    inner, sources = inner_candidate_sources(config, prep, recall)
    # Ray's workers run BLAS with one thread each, and the similarity features' matrix products round
    # their last bit differently with another thread count: the same products here with one thread.
    # Searches of 64 users: the four parts hold one or two each
    with threadpool_limits(1):
        expected = labelled_candidates(config, prep, inner, sources, max_users=300, search_chunk=64)
    assert len(expected.users) == 300 and expected.labels.sum() > 0
    on_ray = labelled_candidates(
        config, prep, inner, sources, max_users=300, engine=ray_engine, search_chunk=64
    )
    assert_same_examples(on_ray, expected)
    threaded = labelled_candidates(config, prep, inner, sources, max_users=300, search_chunk=64)
    np.testing.assert_allclose(on_ray.batch.dense, threaded.batch.dense, rtol=1e-6, atol=1e-7)


def test_rebuild_index_with_engine_ray_embeds_the_catalogue_as_in_process(config, built, tmp_path):
    """The command line's --engine ray, in a process of its own with a Ray of its own, on a copy of the
    session's artifacts: the published index holds the same embeddings, to the bit."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(config.artifacts_dir, artifacts)
    env = dict(
        os.environ,
        CASCADE_CONFIG="",
        CASCADE_ARTIFACTS_DIR=str(artifacts),
        CASCADE_DATA__DATA_DIR=str(config.data.data_dir),
        CASCADE_PRIVACY__PSEUDONYM_KEY=PSEUDONYM_KEY,
        CASCADE_RECALL__NUM_CANDIDATES="150",
        CASCADE_OFFLINE__WORKERS="2",
        CASCADE_OFFLINE__OBJECT_STORE_MB="256",
    )
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "--log-format", "text", "rebuild-index", "--engine", "ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "offline jobs on Ray" in done.stderr
    rebuilt = ArtifactStore(artifacts).require("index")
    assert rebuilt.version != built["index"].version
    np.testing.assert_array_equal(
        np.load(rebuilt.path / EMBEDDINGS_FILE), np.load(built["index"].path / EMBEDDINGS_FILE)
    )
