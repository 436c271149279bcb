"""`cascade evaluate recall|ranking|pipeline|rating`: each stage, and the whole served pipeline, measured on
the held-out window of the temporal split, beside the baselines it has to beat."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
import torch

from cascade.config import AppConfig
from cascade.core.metrics import auc, evaluate_rankings, gauc, logloss
from cascade.core.seeding import seed_everything
from cascade.data.dataset import Dataset
from cascade.ranking.features import UserRow
from cascade.ranking.rating import (
    RATING_MODELS,
    USER_SIDE,
    ImplicitFeedback,
    RatingBlend,
    RatingData,
    build_rating_model,
    predict,
    rmse,
    train_rating_model,
)
from cascade.ranking.registry import RANKERS
from cascade.recall.baselines import ALSRecommender, interaction_matrix, tune_als
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.recall.channels import RecallChannels, keep_unblocked, two_tower_order
from cascade.serving.models import ServingModels
from cascade.serving.pipeline import RecommendationPipeline, UserContext
from cascade.training.prepare import check_trained_on, compute_threads, prepare
from cascade.training.ranking import (
    CandidateSources,
    RankingExamples,
    als_features,
    fit_ranker,
    item_statistics,
    labelled_candidates,
    ranking_training_examples,
    rating_features,
    require_current_recall,
)
from cascade.training.task import COVERAGE_K, EVAL_RECALL_KS, RecallTask

logger = logging.getLogger(__name__)

PIPELINE_KS = (10, 50, 100)  # the pipeline returns at most its candidate count, so no @500 for it
# A small grid around the values that suit MovieLens-sized data; chosen on the validation split.
ALS_GRID = {"factors": [16, 32, 64], "regularization": [0.01, 0.1, 1.0], "alpha": [1.0, 10.0, 40.0]}


def evaluate_recall(config: AppConfig) -> dict[str, dict[str, float]]:
    """The published two-tower model, popularity and a validation-tuned ALS on the held-out window."""
    recall = RecallBundle(config.artifact_store().require(RECALL))
    check_trained_on(recall.dataset_fingerprint, config)
    prep = prepare(config)
    test = RecallTask.of(prep, prep.split, config)
    k = max(EVAL_RECALL_KS)
    report: dict[str, dict[str, float]] = {}
    model = recall.two_tower()
    report["two_tower"] = test.evaluate(
        {u: r for u, (r, _) in test.rankings(*test.embed(model, prep), k).items()}, prep.schema.num_items
    )
    popular_order = np.argsort(-prep.item_counts(prep.split.train)[1:], kind="stable") + 1
    nothing = np.zeros(0, dtype=np.int64)
    report["popularity"] = test.evaluate(
        {
            int(u): popular_order[keep_unblocked(popular_order, test.seen.get(int(u), nothing), k)]
            for u in test.users
        },
        prep.schema.num_items,
    )
    shape = (prep.schema.num_users, prep.schema.num_items)
    validation = RecallTask.of(prep, prep.inner_split(config.data.holdout_fraction), config)

    def matrix(task: RecallTask) -> sp.csr_matrix:
        return interaction_matrix(task.sequences.user, task.sequences.item, shape)

    def validation_recall(als: ALSRecommender) -> float:
        found = als.recommend(validation.rows, 100)
        return evaluate_rankings(
            dict(zip(validation.users.tolist(), found)), validation.positives, (100,), ()
        )["recall@100"]

    params, grid = tune_als(ALS_GRID, matrix(validation), validation_recall, config.seed)
    als = ALSRecommender(params, config.seed).fit(matrix(test))
    report["als"] = test.evaluate(
        dict(zip(test.users.tolist(), als.recommend(test.rows, k))), prep.schema.num_items
    )
    report["als"].update(
        factors=float(params.factors), regularization=params.regularization, alpha=params.alpha
    )
    report["als_grid_validation_recall@100"] = grid
    return report


def ranking_report(examples: RankingExamples, scores: np.ndarray) -> dict:
    """AUC, GAUC, logloss of ``scores`` (B,) on the labelled candidates, and NDCG@10 / Recall@10 of each
    user's candidates sorted by them, against all the user's held-out positives."""
    ranked = evaluate_rankings(examples.rankings(scores), examples.positives, (10,), (10,))
    return {
        "auc": auc(examples.labels, scores),
        "gauc": gauc(examples.labels, scores, examples.batch.request),
        "logloss": logloss(examples.labels, scores),
        "ndcg@10": ranked["ndcg@10"],
        "recall@10": ranked["recall@10"],
    }


def evaluate_ranking(config: AppConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """Train Wide&Deep, DIN and LightGBM on the nested split's candidates, exactly as `train ranking`
    does, and compare them on the held-out window's candidates from the current recall artifact, beside
    the recall order alone."""
    store = config.artifact_store()
    recall = require_current_recall(store, config, Dataset.fingerprint_of(config.data.path))
    prep = prepare(config)
    training = ranking_training_examples(config, prep, recall)
    sources = CandidateSources(
        model=recall.two_tower(),
        channels=RecallChannels(recall.cooccurrence(), recall.segment_popularity(), config.recall),
        statistics=item_statistics(config, prep, prep.split.train),
        ratings=rating_features(config, prep, prep.split.train),
        preferences=als_features(config, prep, prep.split.train),
    )
    test = labelled_candidates(config, prep, prep.split, sources)
    # the recall order: each request's candidates arrive sorted by two-tower score
    recall_scores = 1.0 / (1.0 + np.exp(-test.batch.dense[:, 0] / config.recall.temperature))
    report = {"recall_order": ranking_report(test, recall_scores.astype(np.float64))}
    for name in RANKERS:
        ranker, metrics = fit_ranker(config, prep, training, progress, name)
        started = time.perf_counter()
        scores = ranker.score(test.batch)
        report[name] = ranking_report(test, scores) | {
            "train_seconds": metrics["train_seconds"],
            "score_us_per_candidate": (time.perf_counter() - started) / len(test.labels) * 1e6,
        }
    for part in report.values():
        part["users"] = float(len(test.users))
        part["candidates"] = float(len(test.labels))
    return report


def evaluate_pipeline(config: AppConfig) -> dict[str, dict[str, float]]:
    """Popularity, the two-tower channel alone, all recall channels merged (in two-tower order) and the
    whole pipeline on the held-out window, side by side: the served pipeline, replayed offline."""
    store = config.artifact_store()
    models = ServingModels.load(store, config)
    check_trained_on(RecallBundle(store.require(RECALL)).dataset_fingerprint, config)
    prep = prepare(config)
    pipeline = RecommendationPipeline(models, config)
    test = RecallTask.of(prep, prep.split, config)
    k = max(PIPELINE_KS)
    empty = np.zeros(0, dtype=np.int64)
    rankings: dict[str, dict[int, np.ndarray]] = {
        "popularity": {},
        "two_tower": {},
        "recall_channels": {},
        "pipeline": {},
    }
    pipeline_seconds = 0.0
    # each user is served as of their last training interaction, as the ranker's examples were
    last_seen = prep.split.train.groupby("user_id")["timestamp"].max()
    for user, row, history in zip(test.users.tolist(), test.rows.tolist(), test.history):
        ctx = UserContext(
            row=UserRow.of(prep.users, row),
            history=history[history > 0],
            seen=test.seen.get(user, empty),
            has_profile=True,
            at=float(last_seen[user]),
        )
        rankings["popularity"][user] = pipeline.popular(ctx.seen, k).items
        query = pipeline.user_embedding(ctx)
        rankings["two_tower"][user] = pipeline.two_tower(query, ctx.seen, k).items
        merged = pipeline.channels(ctx, query)
        order, _, _ = two_tower_order(merged.items, models.index.embeddings, query)
        rankings["recall_channels"][user] = merged.items[order]
        started = time.perf_counter()
        rankings["pipeline"][user] = pipeline.recommend(ctx, k, empty).items
        pipeline_seconds += time.perf_counter() - started
    report = {
        name: evaluate_rankings(r, test.positives, PIPELINE_KS, (10,), prep.schema.num_items - 1, COVERAGE_K)
        for name, r in rankings.items()
    }
    report["pipeline"]["mean_in_process_ms"] = pipeline_seconds / max(len(test.users), 1) * 1e3
    return report


def evaluate_rating(config: AppConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """Rating RMSE on a seeded random 90/10 split of all ratings: PMF, the hybrid (SVD++ + side features)
    model and I-AutoRec, each with its L2 weight chosen on a 5% validation part of the training ratings,
    and least-squares blends of them fitted on that validation part. The test ratings are touched once,
    to report."""
    seed_everything(config.seed)
    prep = prepare(config)
    schema = prep.schema
    data = RatingData.of_interactions(schema, prep.dataset.interactions)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(data.ratings))
    test_rows, rest = order[: len(order) // 10], order[len(order) // 10 :]
    val_rows, train_rows = rest[: len(rest) // 20], rest[len(rest) // 20 :]
    train, validation, test = data.take(train_rows), data.take(val_rows), data.take(test_rows)
    feedback = ImplicitFeedback(train, schema.num_users)
    side = {name: getattr(prep.users, name) for name in USER_SIDE}
    mean = float(train.ratings.mean())

    report = {"global_mean": {"rmse": rmse(np.full(len(test.ratings), mean), test.ratings)}}
    on_validation, on_test = {}, {}
    with compute_threads(config.ranking.threads):
        for kind, (grid, settings) in RATING_MODELS.items():
            best = None
            for l2 in grid:
                torch.manual_seed(config.seed)
                started = time.perf_counter()
                model, metrics = train_rating_model(
                    build_rating_model(kind, schema, prep.items, train),
                    train,
                    validation,
                    side,
                    feedback,
                    replace(settings, l2=l2),
                    config.seed,
                )
                metrics |= {"l2": l2, "train_seconds": time.perf_counter() - started}
                logger.info("rating %s l2=%s: %s", kind, l2, metrics)
                if best is None or metrics["validation_rmse"] < best[1]["validation_rmse"]:
                    best = (model, metrics)
            model, metrics = best
            on_validation[kind] = predict(model, validation, side, feedback)
            on_test[kind] = predict(model, test, side, feedback)
            report[kind] = {"rmse": rmse(on_test[kind], test.ratings)} | metrics
    # the models err differently; the blends are fitted on validation only
    for name, members in (("blend_factor_models", ("hybrid", "pmf")), ("blend", tuple(RATING_MODELS))):
        blend = RatingBlend.fit({m: on_validation[m] for m in members}, validation.ratings)
        report[name] = {
            "rmse": rmse(blend.predict(on_test), test.ratings),
            "validation_rmse": rmse(blend.predict(on_validation), validation.ratings),
            "intercept": blend.intercept,
        } | {f"weight_{m}": w for m, w in zip(blend.names, blend.weights, strict=True)}
    for part in report.values():
        part |= {"train_ratings": float(len(train.ratings)), "test_ratings": float(len(test.ratings))}
    return report
