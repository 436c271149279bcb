"""`cascade evaluate recall|ranking|pipeline|rating`: each stage, and the whole served pipeline, measured on
the held-out window of the temporal split, beside the baselines it has to beat."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from cascade.config import AppConfig
from cascade.core.metrics import auc, beyond_accuracy, evaluate_rankings, gauc, logloss
from cascade.core.schema import COOCCURRENCE, ITEM_ITEM, TWO_TOWER, native_id
from cascade.core.seeding import seed_everything
from cascade.customers.profiles import user_values, value_profiles
from cascade.customers.tiers import TIERS
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
from cascade.recall.baselines import (
    EASE_MAX_ITEMS,
    ALSParams,
    ALSRecommender,
    EASEParams,
    EASERecommender,
    ItemKNNParams,
    ItemKNNRecommender,
    Recommender,
    interaction_matrix,
    tune,
)
from cascade.recall.bundle import RECALL, RecallBundle
from cascade.recall.channels import (
    ChannelCandidates,
    RecallChannels,
    keep_unblocked,
    reciprocal_rank_fusion,
)
from cascade.recall.sequential import SASREC_MAX_ITEMS, SASRecParams, SASRecRecommender
from cascade.rerank.engine import RuleEngine
from cascade.rerank.rules_file import RulesFile, UserTraits, load_rules
from cascade.serving.models import ServingModels
from cascade.serving.pipeline import RecommendationPipeline, UserContext
from cascade.training.prepare import Prepared, check_trained_on, compute_threads, prepare
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
from cascade.training.recall import count_segments
from cascade.training.task import COVERAGE_K, EVAL_RECALL_KS, RecallTask

logger = logging.getLogger(__name__)

PIPELINE_KS = (10, 50, 100)  # the pipeline returns at most its candidate count, so no @500 for it


# Small grids around the values that suit MovieLens-sized data; each picked on the validation split.
ALS_GRID = {"factors": [16, 32, 64], "regularization": [0.01, 0.1, 1.0], "alpha": [1.0, 10.0, 40.0]}
EASE_GRID = {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]}
ITEM_KNN_GRID = {"neighbours": [20, 50, 100, 200, 400], "shrinkage": [0.0, 10.0]}
FUSION_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)  # a channel's weight in the rank fusion, the two-tower's being 1
# 0.5 lost to 0.2 on MovieLens-100K's validation split (Recall@100 0.39 against 0.57) at a third of the time
SASREC_DROPOUTS = (0.2,)
BASELINES: dict[str, Callable[..., EASERecommender | ItemKNNRecommender | ALSRecommender]] = {
    "als": lambda seed, **p: ALSRecommender(ALSParams(**p), seed),
    "ease": lambda seed, **p: EASERecommender(EASEParams(**p)),
    "item_knn": lambda seed, **p: ItemKNNRecommender(ItemKNNParams(**p)),
}


def _grids() -> dict[str, dict[str, list]]:
    """Each baseline's grid, read when evaluating (so that a caller may narrow them)."""
    return {"als": ALS_GRID, "ease": EASE_GRID, "item_knn": ITEM_KNN_GRID}


def evaluate_recall(config: AppConfig) -> dict[str, dict[str, float]]:
    """On the held-out window, in one run: the recall stage as served (every channel merged), the
    published two-tower model alone, and the baselines it has to beat (popularity, and ALS, EASE and
    item-kNN, each tuned on the validation split only, then refitted on the whole training part)."""
    recall = RecallBundle(config.artifact_store().require(RECALL), config.pseudonyms())
    check_trained_on(recall.dataset_fingerprint, config)
    prep = prepare(config)
    test = RecallTask.of(prep, prep.split, config)
    k = max(EVAL_RECALL_KS)
    report: dict[str, dict[str, float]] = {}
    model = recall.two_tower()
    item_embeddings, queries = test.embed(model, prep)
    two_tower = test.rankings(item_embeddings, queries, k)
    report["two_tower"] = test.evaluate({u: r for u, (r, _) in two_tower.items()}, prep.schema.num_items)
    popular_order = np.argsort(-prep.item_counts(prep.split.train)[1:], kind="stable") + 1
    nothing = np.zeros(0, dtype=np.int64)
    report["popularity"] = test.evaluate(
        {
            native_id(u): popular_order[
                keep_unblocked(popular_order, test.seen.get(native_id(u), nothing), k)
            ]
            for u in test.users
        },
        prep.schema.num_items,
    )
    shape = (prep.schema.num_users, prep.schema.num_items)
    validation = RecallTask.of(prep, prep.inner_split(config.data.holdout_fraction), config)
    report["recall_stage"] = _served_recall_stage(config, prep, recall, validation, test, two_tower)

    validation_matrix, test_matrix = (
        interaction_matrix(task.sequences.user, task.sequences.item, shape) for task in (validation, test)
    )

    def validation_recall(baseline: Recommender) -> float:
        found = baseline.recommend(validation.rows, 100)
        return evaluate_rankings(
            dict(zip(validation.users.tolist(), found)), validation.positives, (100,), ()
        )["recall@100"]

    grids = _grids()
    for name, build in BASELINES.items():
        grid = grids[name]
        if name == "ease" and prep.schema.num_items > EASE_MAX_ITEMS:
            logger.warning("EASE left out: %d items is above its limit", prep.schema.num_items)
            continue
        started = time.perf_counter()
        point, scores = tune(partial(build, config.seed), grid, validation_matrix, validation_recall)
        fitted = build(config.seed, **point).fit(test_matrix)
        found = fitted.recommend(test.rows, k)
        report[name] = test.evaluate(dict(zip(test.users.tolist(), found)), prep.schema.num_items)
        report[name] |= {key: float(value) for key, value in point.items()}
        report[name]["tune_seconds"] = time.perf_counter() - started
        report[f"{name}_grid_validation_recall@100"] = scores
    if prep.schema.num_items <= SASREC_MAX_ITEMS:
        report["sasrec"] = _sasrec(config, prep, validation, test, validation_recall)
    else:
        logger.warning("SASRec left out: %d items is above its limit", prep.schema.num_items)
    return report


def _sasrec(
    config: AppConfig,
    prep: Prepared,
    validation: RecallTask,
    test: RecallTask,
    validation_recall: Callable[[Recommender], float],
) -> dict[str, float]:
    """SASRec with its dropout and epoch count picked on the validation split, refitted on the whole
    training part for that many epochs."""
    started = time.perf_counter()
    num_users, num_items = prep.schema.num_users, prep.schema.num_items
    best: tuple[float, SASRecParams, int] | None = None
    with compute_threads(config.ranking.threads):
        for dropout in SASREC_DROPOUTS:
            params = SASRecParams(dropout=dropout)
            model = SASRecRecommender(params, config.seed).fit(
                validation.sequences.user,
                validation.sequences.item,
                num_users,
                num_items,
                validate=validation_recall,
            )
            score = validation_recall(model)
            logger.info("SASRec dropout=%s: validation %.4f at epoch %d", dropout, score, model.best_epoch)
            if best is None or score > best[0]:
                best = (score, params, model.best_epoch)
        assert best is not None
        _, params, epochs = best
        model = SASRecRecommender(params, config.seed).fit(
            test.sequences.user, test.sequences.item, num_users, num_items, epochs=epochs
        )
        found = model.recommend(test.rows, max(EVAL_RECALL_KS))
    report = test.evaluate(dict(zip(test.users.tolist(), found)), num_items)
    return report | {
        "dropout": params.dropout,
        "epochs": float(epochs),
        "tune_seconds": time.perf_counter() - started,
    }


def _channel_lists(
    config: AppConfig,
    prep: Prepared,
    task: RecallTask,
    channels: RecallChannels,
    two_tower: dict[int, tuple[np.ndarray, np.ndarray]],
) -> dict[int, list[ChannelCandidates]]:
    """Each user's candidates from every channel, as serving asks them (the two-tower channel by exact
    search, ``two_tower``: user id -> its ranked items and scores)."""
    out = {}
    empty = np.zeros(0, dtype=np.int64)
    quota = config.recall.num_candidates
    for i, user in enumerate(task.users.tolist()):
        items, scores = two_tower[user]
        row = UserRow.of(prep.users, int(task.rows[i]))
        out[user] = channels.lists(
            ChannelCandidates(items[:quota], scores[:quota], TWO_TOWER),
            task.history[i][task.history[i] > 0],
            task.seen.get(user, empty),
            row.gender,
            row.age,
        )
    return out


def tuned_fusion_weights(
    config: AppConfig, prep: Prepared, recall: RecallBundle, validation: RecallTask
) -> dict[str, float]:
    """The channel weights of the rank fusion (the two-tower's fixed at 1) with the best Recall@100 on
    the ``validation`` split, from the recall artifact's models of that split."""
    channels = RecallChannels(
        recall.inner_cooccurrence(),
        count_segments(config, prep, validation.sequences),
        config.recall,
        recall.inner_item_item(),
    )
    model = recall.inner_two_tower()
    two_tower = validation.rankings(*validation.embed(model, prep), config.recall.num_candidates)
    lists = _channel_lists(config, prep, validation, channels, two_tower)
    best: tuple[float, dict[str, float]] | None = None
    for item_item, cooccurrence in itertools.product(FUSION_GRID, FUSION_GRID):
        weights = {TWO_TOWER: 1.0, ITEM_ITEM: item_item, COOCCURRENCE: cooccurrence}
        fused = {u: reciprocal_rank_fusion(c, weights) for u, c in lists.items()}
        value = evaluate_rankings(fused, validation.positives, (100,), ())["recall@100"]
        if best is None or value > best[0]:
            best = (value, weights)
    assert best is not None
    return best[1]


def _served_recall_stage(
    config: AppConfig,
    prep: Prepared,
    recall: RecallBundle,
    validation: RecallTask,
    test: RecallTask,
    two_tower: dict[int, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """The candidates ranking receives from every channel, listed by reciprocal rank fusion with channel
    weights picked on the validation split (from the recall artifact's validation-split models): how many
    positives the first k hold, and how many the whole candidate list holds."""
    weights = tuned_fusion_weights(config, prep, recall, validation)
    channels = RecallChannels(
        recall.cooccurrence(), recall.segment_popularity(), config.recall, recall.item_item()
    )
    fused = {
        u: reciprocal_rank_fusion(c, weights)
        for u, c in _channel_lists(config, prep, test, channels, two_tower).items()
    }
    empty = np.zeros(0, dtype=np.int64)
    report = test.evaluate(fused, prep.schema.num_items)
    report["mean_candidates"] = float(np.mean([len(f) for f in fused.values()] or [0.0]))
    report["candidate_recall"] = float(
        np.mean([_share_found(f, test.positives.get(u, empty)) for u, f in fused.items()] or [0.0])
    )
    return report | {f"fusion_weight_{name}": w for name, w in weights.items()}


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
        channels=RecallChannels(
            recall.cooccurrence(), recall.segment_popularity(), config.recall, recall.item_item()
        ),
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
    """Popularity, the two-tower channel alone, all recall channels merged (fused by rank, with the
    share of positives anywhere among the candidates) and the whole pipeline on the held-out window, side by
    side: the served pipeline, replayed offline. With ``rerank.rules_path`` set, the pipeline also with that
    rules file (``pipeline_with_rules``). Every row also reports intra-list diversity, genre entropy and
    novelty of its top 10 (``beyond_accuracy``)."""
    rules_path = config.rerank.rules_path
    rule_sets = {"pipeline_with_rules": load_rules(rules_path)} if rules_path else {}
    return _replay(config, rule_sets, baselines=True)


def evaluate_rule_sets(config: AppConfig, rule_sets: dict[str, RulesFile | None]) -> dict[str, dict]:
    """The pipeline under each of ``rule_sets`` (name -> rules; None: no rules) on the held-out window:
    NDCG@10, Recall@k, coverage, intra-list diversity, genre entropy and novelty of each. Recall and ranking
    run once per user; every rule set reorders the same ranked candidates."""
    return _replay(config, rule_sets, baselines=False)


def _replay(
    config: AppConfig, rule_sets: dict[str, RulesFile | None], baselines: bool
) -> dict[str, dict[str, float]]:
    """Replay the served pipeline for every held-out user, as of their last training interaction (as the
    ranker's examples were): the pipeline without rules (``pipeline``), under each rule set, and with
    ``baselines`` popularity, the two-tower alone and the fused recall channels."""
    store = config.artifact_store()
    models = ServingModels.load(store, config)
    recall = RecallBundle(store.require(RECALL), config.pseudonyms())
    check_trained_on(recall.dataset_fingerprint, config)
    prep = prepare(config)
    pipeline = RecommendationPipeline(models, config)
    engines = {"pipeline": pipeline.rules}
    engines |= {
        name: RuleEngine(config.rerank, models.attributes, rules) for name, rules in rule_sets.items()
    }
    test = RecallTask.of(prep, prep.split, config)
    k = max(PIPELINE_KS)
    empty = np.zeros(0, dtype=np.int64)
    rankings: dict[str, dict[int, np.ndarray]] = {}
    weights: dict[str, float] = {}
    if baselines:
        validation = RecallTask.of(prep, prep.inner_split(config.data.holdout_fraction), config)
        weights = tuned_fusion_weights(config, prep, recall, validation)
        rankings |= {"popularity": {}, "two_tower": {}, "recall_channels": {}}
    rankings |= {name: {} for name in engines}
    pipeline_seconds = 0.0
    candidate_recall: list[float] = []
    for user, ctx in _held_out_contexts(config, prep, test):
        if baselines:
            rankings["popularity"][user] = pipeline.popular(ctx.seen, k).items
            query = pipeline.user_embedding(ctx)
            rankings["two_tower"][user] = pipeline.two_tower(query, ctx.seen, k).items
            lists = models.channels.lists(
                pipeline.two_tower(query, ctx.seen, models.num_candidates),
                ctx.history,
                ctx.seen,
                ctx.row.gender,
                ctx.row.age,
            )
            # fused by rank with validation-picked channel weights: in two-tower order the two-tower
            # channel's own candidates would always come first and the other channels would never show
            fused = reciprocal_rank_fusion(lists, weights)
            rankings["recall_channels"][user] = fused
            candidate_recall.append(_share_found(fused, test.positives.get(user, empty)))
        started = time.perf_counter()
        ranked = pipeline.rank(ctx, k, empty)
        request = pipeline.rerank_request(ctx, empty)
        rankings["pipeline"][user] = engines["pipeline"].apply(ranked.items, ranked.scores, request, k).items
        pipeline_seconds += time.perf_counter() - started
        for name, engine in engines.items():
            if name != "pipeline":
                rankings[name][user] = engine.apply(ranked.items, ranked.scores, request, k).items
    report = {
        name: evaluate_rankings(r, test.positives, PIPELINE_KS, (10,), prep.schema.num_items - 1, COVERAGE_K)
        for name, r in rankings.items()
    }
    attributes = models.attributes
    population = int(prep.split.train["user_id"].nunique())
    for name, lists in rankings.items():
        report[name] |= beyond_accuracy(
            lists, attributes.vectors_of, attributes.genres, models.popularity, population
        )
    report["pipeline"]["mean_in_process_ms"] = pipeline_seconds / max(len(test.users), 1) * 1e3
    if baselines:
        report["recall_channels"]["candidate_recall"] = float(np.mean(candidate_recall or [0.0]))
        report["recall_channels"] |= {f"fusion_weight_{name}": w for name, w in weights.items()}
    return report


def _held_out_contexts(
    config: AppConfig, prep: Prepared, test: RecallTask
) -> Iterator[tuple[int, UserContext]]:
    """Each held-out user of ``test`` as the pipeline sees them as of their last training interaction, as
    the ranker's examples were: demographics, history, seen items, and customer value as of the training
    window's end."""
    empty = np.zeros(0, dtype=np.int64)
    last_seen = prep.split.train.groupby("user_id")["timestamp"].max()
    values = user_values(prep.split.train, config.customers)
    for user, row, history in zip(test.users.tolist(), test.rows.tolist(), test.history):
        yield (
            user,
            UserContext(
                row=replace(UserRow.of(prep.users, row), value=values.get(user, 0.0)),
                history=history[history > 0],
                seen=test.seen.get(user, empty),
                has_profile=True,
                at=float(last_seen[user]),
            ),
        )


def _share_found(candidates: np.ndarray, positives: np.ndarray) -> float:
    """Share of ``positives`` among ``candidates``, whatever their order: what ranking can at best find."""
    return float(np.isin(positives, candidates).mean()) if len(positives) else 0.0


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
        blend = RatingBlend.fit(
            {m: on_validation[m] for m in members}, validation.ratings, schema.rating_range
        )
        report[name] = {
            "rmse": rmse(blend.predict(on_test), test.ratings),
            "validation_rmse": rmse(blend.predict(on_validation), validation.ratings),
            "intercept": blend.intercept,
        } | {f"weight_{m}": w for m, w in zip(blend.names, blend.weights, strict=True)}
    for part in report.values():
        part |= {"train_ratings": float(len(train.ratings)), "test_ratings": float(len(test.ratings))}
    return report


def recommended_genres_by_tier(
    config: AppConfig, rules: RulesFile | None = None, per_tier: int = 150, k: int = 10
) -> dict[str, dict]:
    """What each customer-value tier is recommended: the served pipeline replayed (as in
    ``evaluate_pipeline``, as of each held-out user's last training interaction) for up to ``per_tier``
    users of each tier as the feature load serves it, under ``rules`` (default: the configured rules
    file), with each user's tier in their traits so that tier rule sets apply. Per tier: the users
    replayed, the genres of their top ``k`` by share of items, and the mean popularity rank of those
    items (0: the most popular), also of the top ``k`` without rules, so that what the rules change shows
    apart from who the tier's users are."""
    store = config.artifact_store()
    models = ServingModels.load(store, config)
    check_trained_on(RecallBundle(store.require(RECALL)).dataset_fingerprint, config)
    prep = prepare(config)
    pipeline = RecommendationPipeline(models, config)
    engine = pipeline.rules if rules is None else RuleEngine(config.rerank, models.attributes, rules)
    unruled = RuleEngine(config.rerank, models.attributes, None)
    served, _ = value_profiles(prep.dataset.interactions, config.customers)
    tier_of = dict(zip(served["user_id"].tolist(), served["tier"].tolist()))
    test = RecallTask.of(prep, prep.split, config)
    users = prep.dataset.users.set_index("user_id")
    popularity_rank = np.empty(len(models.popularity), dtype=np.int64)
    popularity_rank[np.argsort(-models.popularity, kind="stable")] = np.arange(len(models.popularity))
    empty = np.zeros(0, dtype=np.int64)
    counts: dict[str, Counter] = {tier: Counter() for tier in TIERS}
    ranks: dict[str, list[int]] = {tier: [] for tier in TIERS}
    plain_ranks: dict[str, list[int]] = {tier: [] for tier in TIERS}
    replayed = dict.fromkeys(TIERS, 0)
    for user, held_out in _held_out_contexts(config, prep, test):
        tier = tier_of.get(user)
        if tier is None or replayed[tier] >= per_tier:
            continue
        replayed[tier] += 1
        gender, age = users.at[user, "gender"], int(users.at[user, "age"])
        ctx = replace(held_out, traits=UserTraits(new_user=False, gender=gender, age=age, tier=tier))
        ranked = pipeline.rank(ctx, k, empty)
        request = pipeline.rerank_request(ctx, empty)
        items = engine.apply(ranked.items, ranked.scores, request, k).items
        plain = unruled.apply(ranked.items, ranked.scores, request, k).items
        plain_ranks[tier].extend(popularity_rank[plain].tolist())
        names = models.attributes.genre_names
        counts[tier].update(names[g - 1] for row in models.attributes.genres[items] for g in row if g > 0)
        ranks[tier].extend(popularity_rank[items].tolist())
    report = {}
    for tier in TIERS:
        total = max(sum(counts[tier].values()), 1)
        report[tier] = {
            "users": replayed[tier],
            "genres": [(genre, n / total) for genre, n in counts[tier].most_common()],
            "mean_popularity_rank": float(np.mean(ranks[tier])) if ranks[tier] else float("nan"),
            "mean_popularity_rank_without_rules": (
                float(np.mean(plain_ranks[tier])) if plain_ranks[tier] else float("nan")
            ),
        }
    return report
