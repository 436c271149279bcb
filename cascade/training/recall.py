"""`cascade train recall`: the two-tower model, early-stopped on the nested split and refitted on the whole
training part, and the channels mined beside it, published together as one recall artifact."""

from __future__ import annotations

import logging
import time

import numpy as np

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, fingerprint
from cascade.core.distributed import distributed_context
from cascade.core.engines import LOCAL, OfflineEngine, open_engine
from cascade.core.schema import SCHEMA_VERSION, USER_FIELDS, UserFeatures
from cascade.core.seeding import seed_everything
from cascade.data.dataset import Dataset
from cascade.recall.bundle import RECALL, QuerySample, RecallParts
from cascade.recall.channels import CooccurrenceRules, SegmentPopularity
from cascade.recall.item_item import ItemItemChannel
from cascade.recall.training import InteractionSequences, TwoTowerTrainingResult, train_two_tower
from cascade.recall.two_tower import TwoTowerModel
from cascade.training.guard import scan_if_stale
from cascade.training.prepare import Prepared, prepare, reuse_current
from cascade.training.task import EVAL_RECALL_KS, RecallTask

logger = logging.getLogger(__name__)

# serving-time knobs of the recall config: changing them never retrains the model
SERVING_ONLY_RECALL_FIELDS = frozenset(
    {
        "index_factory",
        "index_min_recall",
        "index_target_recall",
        "num_candidates",
        "cooccurrence_candidates",
        "segment_popular_candidates",
        "item_item_candidates",
        "cooccurrence_recent_items",
    }
)


def recall_fingerprint(config: AppConfig, data_fp: str) -> str:
    return fingerprint(
        "recall",
        SCHEMA_VERSION,
        config.pseudonyms().key_id,  # the schema's users are saved under the key: another key, another model
        data_fp,
        config.seed,
        config.data.model_dump(mode="json"),
        config.features.model_dump(mode="json"),
        config.recall.model_dump(mode="json", exclude=set(SERVING_ONLY_RECALL_FIELDS)),
    )


def _train(
    config: AppConfig,
    prep: Prepared,
    sequences: InteractionSequences,
    progress: bool,
    validation: RecallTask | None = None,
    epochs: int | None = None,
    initial: TwoTowerModel | None = None,
) -> TwoTowerTrainingResult:
    return train_two_tower(
        config.recall,
        prep.schema,
        prep.users,
        prep.items,
        sequences,
        seed=config.seed,
        history_length=config.features.history_length,
        validate=None if validation is None else (lambda model: validation.recall_at_100(model, prep)),
        epochs=epochs,
        progress=progress,
        initial=initial,
    )


def train_two_tower_on(config: AppConfig, prep: Prepared, sequences: InteractionSequences) -> TwoTowerModel:
    """A two-tower model fitted on ``sequences`` for the epochs the current recall model's validation chose
    (``recall.epochs`` without one), without validation: for evaluations that refit on altered data."""
    current = config.artifact_store().current(RECALL)
    best = current.manifest.get("metrics", {}).get("best_epoch") if current is not None else None
    epochs = int(best) if best else config.recall.epochs
    return _train(config, prep, sequences, progress=False, epochs=epochs).model


def mine_rules(
    config: AppConfig, prep: Prepared, sequences: InteractionSequences, engine: OfflineEngine = LOCAL
) -> CooccurrenceRules:
    rc = config.recall
    return CooccurrenceRules.mine(
        sequences.user,
        sequences.item,
        prep.schema.num_items,
        window=rc.cooccurrence_window,
        min_support=rc.cooccurrence_min_support,
        min_confidence=rc.cooccurrence_min_confidence,
        neighbours=rc.cooccurrence_neighbours,
        engine=engine,
    )


def count_segments(config: AppConfig, prep: Prepared, sequences: InteractionSequences) -> SegmentPopularity:
    return SegmentPopularity.count(
        prep.users.gender[sequences.user],
        prep.users.age[sequences.user],
        sequences.item,
        prep.schema.num_items,
        config.recall.segment_popular_top,
    )


def fit_item_item(
    config: AppConfig, prep: Prepared, sequences: InteractionSequences
) -> ItemItemChannel | None:
    """The EASE channel over ``sequences``; None for a catalogue above ``recall.item_item_max_items``."""
    rc = config.recall
    if prep.schema.num_items - 1 > rc.item_item_max_items:
        logger.info(
            "item-item channel not built: %d items is above recall.item_item_max_items (%d)",
            prep.schema.num_items - 1,
            rc.item_item_max_items,
        )
        return None
    shape = (prep.schema.num_users, prep.schema.num_items)
    return ItemItemChannel.fit(sequences.user, sequences.item, shape, rc.item_item_l2)


def _query_sample(config: AppConfig, prep: Prepared, task: RecallTask, count: int = 2000) -> QuerySample:
    """Real user-tower inputs (encoded users and their histories) for tuning and validating the index."""
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(task.rows), size=min(count, len(task.rows)), replace=False)
    rows = task.rows[pick]
    users = UserFeatures(**{name: getattr(prep.users, name)[rows] for name in USER_FIELDS})
    return QuerySample(users, task.history[pick])


def train_recall(config: AppConfig, force: bool = False, progress: bool = True) -> ArtifactRef | None:
    """Train the two-tower model with early stopping on a validation split, refit it on the whole training
    part for the chosen number of epochs, mine the other channels, and publish them together.

    The validation model (trained on the inner split only) is kept too: ranking draws its training
    candidates from it, so the ranker learns from candidates whose labels the recall model never saw.

    Run by every process of a torch.distributed group (``cascade train recall --nproc N``), the models are
    trained data-parallel and the first process publishes them; the others return None."""
    scan_if_stale(config)  # the guard's exclusions first: they change the data set's fingerprint
    store = config.artifact_store()
    data_fp = Dataset.fingerprint_of(config.data.path)
    wanted = recall_fingerprint(config, data_fp)
    if (ref := reuse_current(store, RECALL, wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    prep = prepare(config)
    inner = prep.inner_split(config.data.holdout_fraction)
    validation = RecallTask.of(prep, inner, config, max_users=config.recall.validation_users)
    test_task = RecallTask.of(prep, prep.split, config, max_users=config.recall.validation_users)
    processes, rank = distributed_context()
    if rank == 0:
        # the channels that need no model are built before the towers train, and the validation split is
        # let go once the validation model is trained: at 10M items the towers, their optimiser state and
        # two models leave no room on a 24 GB machine for rule mining's pair counts after training
        with open_engine(config.offline) as engine:
            rules = mine_rules(config, prep, test_task.sequences, engine)
            inner_rules = mine_rules(config, prep, validation.sequences, engine)
        segments = count_segments(config, prep, test_task.sequences)
        item_item = fit_item_item(config, prep, test_task.sequences)
        inner_item_item = fit_item_item(config, prep, validation.sequences)
    started = time.perf_counter()
    inner_result = _train(config, prep, validation.sequences, progress, validation)
    del validation, inner
    seed_everything(config.seed)
    if config.recall.refit_epochs is None:
        final = _train(config, prep, test_task.sequences, progress, epochs=inner_result.best_epoch)
    else:
        final = _train(
            config,
            prep,
            test_task.sequences,
            progress,
            epochs=config.recall.refit_epochs,
            initial=inner_result.model,
        )
    train_seconds = time.perf_counter() - started
    if rank != 0:
        return None  # the first process evaluates and publishes what every process trained
    rankings = test_task.rankings(*test_task.embed(final.model, prep), max(EVAL_RECALL_KS))
    metrics = test_task.evaluate({u: r for u, (r, _) in rankings.items()}, prep.schema.num_items)
    del rankings
    metrics.update(
        train_seconds=train_seconds,
        best_epoch=float(inner_result.best_epoch),
        validation_recall_at_100=max(inner_result.validation),
    )
    logger.info("two-tower on the held-out window: %s", {k: round(v, 4) for k, v in metrics.items()})
    parts = RecallParts(
        schema=prep.schema,
        catalogue=prep.dataset.items,
        popularity=prep.item_counts(prep.split.train),
        model=final.model,
        rules=rules,
        segments=segments,
        inner_model=inner_result.model,
        inner_rules=inner_rules,
        query_sample=_query_sample(config, prep, test_task),
        item_item=item_item,
        inner_item_item=inner_item_item,
    )
    logger.info("co-occurrence: %d rules over %d items", parts.rules.num_rules, prep.schema.num_items - 1)
    return store.publish(
        RECALL,
        parts.write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics=metrics,
        extra={
            "dataset": {"name": prep.dataset.name, "fingerprint": data_fp},
            "validation_curve": inner_result.validation,
            "training_processes": processes,
            "cooccurrence_rules": parts.rules.num_rules,
        },
    )
