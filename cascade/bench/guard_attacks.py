"""`cascade evaluate guard`: what shilling attacks do to recommendations, and what the guard's scan undoes.

Each attack of ATTACK_KINDS at each size adds fake profiles pushing the same target items to the configured
data set. A recall model is fitted on the clean data set, on the attacked one, and on the attacked one less
the profiles `cascade guard scan` flags, each on the per-user temporal split's training part: the two-tower
model (the main recall channel) and the item-item EASE channel. Each one's top ``hit_k`` unseen items of
every genuine user give each target's hit ratio among the users who had not rated it. The guard's cost on
genuine users is NDCG@10 on the held-out part with and without the scan on clean data.

Live, the same fake profiles are recorded event by event through the guard of RecordEvent (a real Redis,
the recording script, the live score), among the held-out events of half the genuine users, the store
loaded with their training part: the detector is fitted on the other half's, so that no user it scores is
one it was fitted on. Rate limits are lifted for the replay (it sends as fast as it can); the live
figures are the share of fake profiles flagged, of fake events kept out of histories, and of genuine
users flagged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.bench import report as bench_report
from cascade.config import AppConfig
from cascade.core.artifacts import git_commit
from cascade.core.schema import native_id
from cascade.core.seeding import seed_everything
from cascade.data.dataset import Dataset
from cascade.data.split import temporal_split
from cascade.guard.attacks import ATTACK_KINDS, AttackSpec, inject_attack, pick_targets
from cascade.recall.item_item import ItemItemChannel
from cascade.serving.feature_store.base import QUARANTINED
from cascade.training.guard import rating_range_of, scan_as_configured
from cascade.training.prepare import prepare_dataset
from cascade.training.recall import train_two_tower_on
from cascade.training.task import RecallTask

logger = logging.getLogger(__name__)

ATTACK_SIZES = (0.01, 0.03, 0.05)
MODELS = ("two-tower", "ease")


def _rankings(config: AppConfig, dataset: Dataset, model: str, k: int) -> tuple[RecallTask, dict, object]:
    """``model`` fitted on ``dataset``'s training part -> its task, user id -> (k,) unseen item indices,
    and the schema."""
    seed_everything(config.seed)
    prep = prepare_dataset(config, dataset, dataset.name)
    task = RecallTask.of(prep, prep.split, config)
    if model == "two-tower":
        two_tower = train_two_tower_on(config, prep, task.sequences)
        ranked = {user: items for user, (items, _) in task.rankings(*task.embed(two_tower, prep), k).items()}
    elif model == "ease":
        shape = (prep.schema.num_users, prep.schema.num_items)
        channel = ItemItemChannel.fit(
            task.sequences.user, task.sequences.item, shape, config.recall.item_item_l2
        )
        ranked = {}
        for user in task.users.tolist():
            seen = task.seen.get(user, np.zeros(0, dtype=np.int64))
            scores = channel.scores(seen)
            scores[0] = -np.inf
            scores[seen] = -np.inf
            best = np.argpartition(-scores, k)[:k]
            ranked[user] = best[np.argsort(-scores[best], kind="stable")]
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return task, ranked, prep.schema


def _hit_ratio(task: RecallTask, ranked: dict, schema, genuine: set, targets: tuple) -> float:
    """Mean over targets of the share of genuine users (who had not rated it) with it in their list."""
    ratios = []
    for target in schema.item_index(np.array(targets)).tolist():
        hits = [
            target in set(items.tolist())
            for user, items in ranked.items()
            if user in genuine and target not in set(task.seen.get(user, ()).tolist())
        ]
        ratios.append(float(np.mean(hits)) if hits else 0.0)
    return float(np.mean(ratios))


def live_replay(
    config: AppConfig,
    dataset: Dataset,
    fake_rows: pd.DataFrame,
    redis_url: str,
    rating_range: tuple[float, float],
) -> dict:
    """``fake_rows`` (the fake profiles) recorded live through the guard among the held-out events of half
    the genuine users (module docstring) -> the live figures."""
    import redis

    from cascade.core.privacy import Pseudonymiser
    from cascade.guard.detector import ShillingDetector
    from cascade.serving.feature_store import HistoryEvent
    from cascade.serving.feature_store.redis_store import RedisFeatureStore
    from cascade.serving.feature_store.resilient import ResilientFeatureStore
    from cascade.serving.guard import RATE_EVENT, EventGuard

    split = temporal_split(dataset.interactions, config.data.holdout_fraction)
    users = np.sort(dataset.interactions["user_id"].unique())
    rng = np.random.default_rng(config.seed)
    scored = set(rng.choice(users, size=len(users) // 2, replace=False).tolist())
    fitted_on = split.train[~split.train["user_id"].isin(scored)]
    detector = ShillingDetector.fit(fitted_on, dataset.users, dataset.items, rating_range, config.seed)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    pseudonyms = Pseudonymiser(b"guard-replay-key-0")  # a throwaway store: its own key
    backend = RedisFeatureStore(client, pseudonyms=pseudonyms)
    history = config.features.history_length
    mine = split.train[split.train["user_id"].isin(scored)]
    backend.bulk_load(dataset.users[dataset.users["user_id"].isin(scored)], mine, history, "guard-replay")
    lifted = ("user_events_per_window", "client_events_per_window", "item_events_per_window")
    unlimited = config.guard.model_copy(update=dict.fromkeys(lifted, 10**9))
    store = ResilientFeatureStore(backend, timeout_s=5.0)
    guard = EventGuard(unlimited, store, config.artifact_store(), history, pseudonyms, detector=detector)
    genuine_events = split.test[split.test["user_id"].isin(scored)]
    stream = pd.concat([genuine_events, fake_rows], ignore_index=True).sort_values("timestamp", kind="stable")
    fakes = set(fake_rows["user_id"].unique().tolist())
    held = {"fake": 0, "genuine": 0}
    started = time.perf_counter()
    for user, item, rating, stamp in stream[["user_id", "item_id", "rating", "timestamp"]].itertuples(
        index=False
    ):
        event = HistoryEvent(native_id(item), RATE_EVENT, int(stamp), float(rating))
        result = store.record_event(native_id(user), event, history, None, 0, guard.checks)
        guard.settle(native_id(user), event, result)
        if result.outcome == QUARANTINED:
            held["fake" if user in fakes else "genuine"] += 1
    seconds = time.perf_counter() - started
    flagged = {flag.user_id for flag in backend.guard_flags(10**6)}
    store.close()
    client.flushdb()
    caught = len(flagged & fakes)
    return {
        "genuine_users": len(scored),
        "events": len(stream),
        "events_per_s": len(stream) / seconds,
        "fake_profiles_flagged": caught / len(fakes),
        "genuine_users_flagged": len(flagged - fakes),
        "precision": caught / len(flagged) if flagged else float("nan"),
        "fake_events_quarantined": held["fake"] / len(fake_rows),
        "genuine_events_quarantined": held["genuine"] / max(len(genuine_events), 1),
    }


def run(
    config: AppConfig,
    kinds: tuple[str, ...] = ATTACK_KINDS,
    sizes: tuple[float, ...] = ATTACK_SIZES,
    models: tuple[str, ...] = MODELS,
    filler_share: float = 0.05,
    targets: int = 3,
    hit_k: int = 20,
    live: bool = True,
) -> dict:
    started = time.perf_counter()
    commit = git_commit()  # the code that runs: the tree may change during a long evaluation
    embedded = None
    if live:
        import tempfile

        from cascade.bench.redis_process import RedisProcess

        embedded = RedisProcess(tempfile.mkdtemp(prefix="cascade-guard-"), fsync="no").start()
    seed_everything(config.seed)
    dataset = Dataset.load(config.data.path, exclusions=False, pseudonyms=config.pseudonyms())
    rating_range = rating_range_of(dataset)
    genuine = {native_id(u) for u in dataset.interactions["user_id"].unique().tolist()}
    gc = config.guard
    pushed = pick_targets(dataset.interactions, targets, config.seed + 7)

    def without(data: Dataset, users: pd.Index) -> Dataset:
        interactions = data.interactions[~data.interactions["user_id"].isin(users)]
        kept_users = data.users[~data.users["user_id"].isin(users)]
        return Dataset.create(data.name, interactions, kept_users, data.items)

    clean_scan = scan_as_configured(config, dataset)
    false_flags = clean_scan.flagged[clean_scan.flagged].index
    clean: dict = {"flagged": len(false_flags), "users": len(genuine)}
    for model in models:
        task, ranked, schema = _rankings(config, dataset, model, hit_k)
        clean[f"{model} hit_ratio"] = _hit_ratio(task, ranked, schema, genuine, pushed)
        clean[f"{model} ndcg@10"] = task.evaluate({u: r[:10] for u, r in ranked.items()}, schema.num_items)[
            "ndcg@10"
        ]
        if len(false_flags):
            task, ranked, schema = _rankings(config, without(dataset, false_flags), model, hit_k)
            guarded = task.evaluate({u: r[:10] for u, r in ranked.items()}, schema.num_items)["ndcg@10"]
        else:
            guarded = clean[f"{model} ndcg@10"]  # the same data set: the same model and lists
        clean[f"{model} ndcg@10_with_guard"] = guarded
        clean[f"{model} ndcg@10_change"] = guarded / clean[f"{model} ndcg@10"] - 1
    rows = []
    for k, kind in enumerate(kinds):
        for s, size in enumerate(sizes):
            spec = AttackSpec(kind, size, filler_share, pushed, config.seed + 100 + 10 * k + s)
            attacked = inject_attack(dataset.interactions, dataset.users, dataset.items, spec, rating_range)
            attacked_set = Dataset.create(dataset.name, attacked.interactions, attacked.users, dataset.items)
            result = scan_as_configured(config, attacked_set)
            flagged = result.flagged[result.flagged].index
            fakes = pd.Index(attacked.fake_users)
            caught = len(flagged.intersection(fakes))
            row = {
                "attack": kind,
                "size": size,
                "fake_profiles": len(fakes),
                "flagged": len(flagged),
                "precision": caught / len(flagged) if len(flagged) else float("nan"),
                "recall": caught / len(fakes),
            }
            for model in models:
                hits = _hit_ratio(*_rankings(config, attacked_set, model, hit_k), genuine, pushed)
                guarded = _hit_ratio(*_rankings(config, without(attacked_set, flagged), model, hit_k),
                                     genuine, pushed)  # fmt: skip
                uplift = hits - clean[f"{model} hit_ratio"]
                row[f"{model} hit_ratio_without_guard"] = hits
                row[f"{model} hit_ratio_with_guard"] = guarded
                row[f"{model} uplift_cut"] = (
                    1 - (guarded - clean[f"{model} hit_ratio"]) / uplift if uplift > 0 else float("nan")
                )
            rows.append(row)
            if embedded is not None:
                fake_rows = attacked.interactions[attacked.interactions["user_id"].isin(fakes)]
                row["live"] = live_replay(config, dataset, fake_rows, embedded.url, rating_range)
            logger.info("guard evaluation: %s", row)
    if embedded is not None:
        embedded.stop()
    return {
        "dataset": config.data.dataset,
        "models": list(models),
        "targets": [str(t) for t in pushed],
        "filler_share": filler_share,
        "hit_k": hit_k,
        "guard": gc.model_dump(mode="json"),
        "clean": clean,
        "rows": rows,
        "commit": commit,
        "seconds": time.perf_counter() - started,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.DataFrame(report["rows"])
    kinds = list(dict.fromkeys(rows["attack"]))
    models = report["models"]
    figure, axes = plt.subplots(
        len(models), len(kinds), figsize=(4 * len(kinds), 3.6 * len(models)), squeeze=False
    )
    for m, model in enumerate(models):
        for axis, kind in zip(axes[m], kinds):
            part = rows[rows["attack"] == kind].sort_values("size")
            sizes = part["size"].to_numpy() * 100
            axis.plot(sizes, part[f"{model} hit_ratio_without_guard"], "o-", color="tab:red",
                      label="without the guard")  # fmt: skip
            axis.plot(sizes, part[f"{model} hit_ratio_with_guard"], "s-", color="tab:green",
                      label="with the guard")  # fmt: skip
            axis.axhline(
                report["clean"][f"{model} hit_ratio"], color="grey", linestyle=":", label="no attack"
            )
            axis.set_title(f"{model}: {kind} attack")
            axis.set_xlabel("fake profiles, % of users")
        axes[m][0].set_ylabel(f"targets' hit ratio in the top {report['hit_k']}")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"Shilling attacks on {report['dataset']}, with and without the guard's scan")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary(report: dict) -> str:
    clean = report["clean"]
    models = report["models"]
    lines = [
        f"# Shilling attacks and the guard ({report['dataset']})",
        "",
        f"{len(report['targets'])} target items, filler {report['filler_share']:.0%} of the catalogue; hit "
        f"ratio: share of genuine users (who had not rated a target) with it in their top {report['hit_k']}, "
        "without the guard / with it.",
        "",
        "| attack | fake profiles | precision | recall | "
        + " | ".join(f"{m} hit ratio | {m} uplift cut" for m in models)
        + " |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(models),
        "| none | 0 | | | " + " | ".join(f"{clean[f'{m} hit_ratio']:.4f} | " for m in models) + " |",
    ]
    for row in report["rows"]:
        cells = " | ".join(
            f"{row[f'{m} hit_ratio_without_guard']:.4f} / {row[f'{m} hit_ratio_with_guard']:.4f} "
            f"| {row[f'{m} uplift_cut']:.0%}"
            for m in models
        )
        lines.append(
            f"| {row['attack']} {row['size']:.0%} | {row['fake_profiles']} | {row['precision']:.3f} "
            f"| {row['recall']:.3f} | {cells} |"
        )
    live = [row for row in report["rows"] if "live" in row]
    if live:
        lines += [
            "",
            "Live, through RecordEvent's guard (a real Redis), among the held-out events of "
            f"{live[0]['live']['genuine_users']} genuine users the detector was not fitted on:",
            "",
            "| attack | fake profiles flagged | their events kept out | genuine users flagged "
            "| genuine events held | events/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in live:
            figures = row["live"]
            lines.append(
                f"| {row['attack']} {row['size']:.0%} | {figures['fake_profiles_flagged']:.0%} "
                f"| {figures['fake_events_quarantined']:.0%} | {figures['genuine_users_flagged']} "
                f"| {figures['genuine_events_quarantined']:.2%} | {figures['events_per_s']:.0f} |"
            )
    lines += ["", f"Clean data: the scan flags {clean['flagged']} of {clean['users']} genuine users."]
    for m in models:
        lines.append(
            f"{m}: NDCG@10 {clean[f'{m} ndcg@10']:.4f} without the guard, "
            f"{clean[f'{m} ndcg@10_with_guard']:.4f} with it ({clean[f'{m} ndcg@10_change']:+.2%})."
        )
    lines += ["", f"commit {report['commit']}, {report['seconds']:.0f} s", ""]
    return "\n".join(lines)


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return bench_report.write_outputs(report, json_path, plot, summary)
