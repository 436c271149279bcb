"""`cascade segments report`: the page a marketing team reads about customer value.

On a customer log's time split (``training.value.value_split``): the tiers A-D of the method's weighted
RFM (the tiering served), their sizes and the share of the next period's value (spend, or activity where
there is no money) each held; every model's gain (Lorenz) curve of that value; and how customers moved
between tiers from one cut-off to the next.
JSON + PNG + markdown, like the benchmarks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cascade.bench import report as bench_report
from cascade.config import AppConfig
from cascade.core.artifacts import git_commit
from cascade.customers.tiers import TIERS, quartile_tiers, tiering_report
from cascade.customers.value_model import WeightedRFM
from cascade.rerank.rules_file import load_rules
from cascade.training.evaluate import recommended_genres_by_tier
from cascade.training.value import value_split

TIERING = "weighted RFM"  # the method's own tiering, and the one served
GAIN_POINTS = 101


def run(
    config: AppConfig,
    dataset: str = "cdnow",
    period_days: float | None = None,
    rules_path: Path | None = None,
) -> dict:
    """``rules_path``: the rules the served data set's recommendations are replayed under (default: the
    configured rules file); a data set that is not the served one has no recommendations to show."""
    started = time.perf_counter()
    split = value_split(config, dataset, period_days)
    realised = split.test_y
    tiers = quartile_tiers(split.scores[TIERING])
    total = max(float(realised.sum()), 1e-12)
    tier_rows = [
        {
            "tier": TIERS[t],
            "customers": int((tiers == t).sum()),
            "value_share": float(realised[tiers == t].sum() / total),
            "buyers_share": float((realised[tiers == t] > 0).mean()) if (tiers == t).any() else 0.0,
            "mean_value": float(realised[tiers == t].mean()) if (tiers == t).any() else 0.0,
        }
        for t in range(4)
    ]
    # migration: each customer's tier as of the first cut-off against as of the second, by the same
    # tiering (weighted RFM needs no fitting), for the customers known at both
    rfm = WeightedRFM(config.customers)
    before = quartile_tiers(rfm.predict(split.train_x))
    after = quartile_tiers(rfm.predict(split.test_x))
    position = {customer: row for row, customer in enumerate(split.test_x.index.tolist())}
    rows = [(b, position[c]) for c, b in zip(split.train_x.index.tolist(), before.tolist()) if c in position]
    migration = np.zeros((4, 4), dtype=np.int64)
    for tier_before, row in rows:
        migration[tier_before, after[row]] += 1
    shares = np.linspace(0, 1, GAIN_POINTS)
    gains = {name: _gain(scores, realised, shares) for name, scores in split.scores.items()}
    gains["perfect"] = _gain(realised, realised, shares)
    recommended = None
    if dataset == config.data.dataset:  # the served catalogue: what each tier is recommended
        rules = load_rules(rules_path) if rules_path is not None else None
        recommended = recommended_genres_by_tier(config, rules)
    return {
        "dataset": dataset,
        "recommended": recommended,
        "rules": str(rules_path or config.rerank.rules_path or ""),
        "value": split.value_kind,
        "customers": len(split.test_x),
        "cut_offs": list(split.cut_offs),
        "tiering": TIERING,
        "tiers": tier_rows,
        "models": {
            name: {
                k: v
                for k, v in tiering_report(scores, realised).items()
                if k != "confusion_predicted_by_realised"
            }
            for name, scores in split.scores.items()
        },
        "segments": split.segments,
        "gain_customer_shares": shares.tolist(),
        "gains": {name: curve.tolist() for name, curve in gains.items()},
        "migration_before_by_after": migration.tolist(),
        "commit": git_commit(),
        "seconds": time.perf_counter() - started,
    }


def _gain(scores: np.ndarray, realised: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Share of the realised value held by the best x of customers by ``scores``, at each x of ``shares``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(realised[order])]) / max(float(realised.sum()), 1e-12)
    return cumulative[np.round(shares * len(order)).astype(np.int64)]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recommended = report.get("recommended")
    panels = 4 if recommended else 3
    figure, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 5))
    bars, gain, moves = axes[:3]
    tiers = report["tiers"]
    x = np.arange(len(tiers))
    total = max(sum(row["customers"] for row in tiers), 1)
    bars.bar(x - 0.2, [row["customers"] / total for row in tiers], 0.4, label="customers")
    bars.bar(x + 0.2, [row["value_share"] for row in tiers], 0.4, label=f"next period's {report['value']}")
    bars.set_xticks(x, [row["tier"] for row in tiers])
    bars.set_ylabel("share")
    bars.set_title(f"Tiers ({report['tiering']}): who holds the value")
    bars.legend()
    shares = report["gain_customer_shares"]
    for name, curve in report["gains"].items():
        style = {"linestyle": ":", "color": "black"} if name == "perfect" else {}
        gain.plot(shares, curve, label=name, **style)
    gain.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    gain.axvline(0.25, color="grey", linestyle="--", linewidth=0.8)
    gain.set_xlabel("share of customers, best first by each model")
    gain.set_ylabel(f"share of the next period's {report['value']}")
    gain.set_title("Gain (Lorenz) curves")
    gain.legend(fontsize=7)
    migration = np.array(report["migration_before_by_after"])
    moves.imshow(migration, cmap="Blues")
    for (row, column), count in np.ndenumerate(migration):
        moves.text(column, row, str(count), ha="center", va="center", fontsize=8)
    labels = [row["tier"] for row in tiers]
    moves.set_xticks(range(4), labels)
    moves.set_yticks(range(4), labels)
    moves.set_xlabel("tier as of the second cut-off")
    moves.set_ylabel("tier as of the first cut-off")
    moves.set_title("Tier migration")
    if recommended:
        genres = _top_genres(recommended, 6)
        shares = {tier: dict(map(tuple, row["genres"])) for tier, row in recommended.items()}
        width = 0.8 / len(genres)
        for n, genre in enumerate(genres):
            axes[3].bar(x + (n - len(genres) / 2 + 0.5) * width, [shares[t].get(genre, 0.0) for t in TIERS],
                        width, label=genre)  # fmt: skip
        axes[3].set_xticks(x, list(TIERS))
        axes[3].set_ylabel("share of the genres recommended (top 10)")
        axes[3].set_title("What each tier is recommended")
        axes[3].legend(fontsize=7)
    figure.suptitle(f"Customer value: {report['dataset']}, {report['customers']} customers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summary(report: dict) -> str:
    value = report["value"]
    active = "customers who bought" if value == "spend" else "customers active"
    lines = [
        f"# Customer value: {report['dataset']} ({report['customers']} customers)",
        "",
        f"Tiers by {report['tiering']} as of the second cut-off, against the {value} of the period after it.",
        "",
        f"| tier | customers | share of next period's {value} | {active} | mean {value} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["tiers"]:
        lines.append(
            f"| {row['tier']} | {row['customers']} | {row['value_share']:.1%} | {row['buyers_share']:.1%} "
            f"| {row['mean_value']:.2f} |"
        )
    lines += ["", "| model | Spearman | tier A's share | tier A lift |", "|---|---:|---:|---:|"]
    for name, result in report["models"].items():
        lines.append(
            f"| {name} | {result['spearman']:.3f} | {result['value_share_by_tier']['A']:.1%} "
            f"| {result['tier_a_lift']:.2f} |"
        )
    lines += ["", "Tier migration (rows: as of the first cut-off; columns: as of the second):", ""]
    lines += ["| from \\ to | A | B | C | D |", "|---|---:|---:|---:|---:|"]
    for tier, row in zip(TIERS, report["migration_before_by_after"]):
        lines.append(f"| {tier} | " + " | ".join(str(count) for count in row) + " |")
    recommended = report.get("recommended")
    if recommended:
        lines += [
            "",
            f"What each tier is recommended (top 10, rules {report['rules'] or 'none'}; the served pipeline "
            "replayed for held-out users as of their last training interaction):",
            "",
            "| tier | users | most recommended genres | mean popularity rank of the items (0: the most "
            "popular) | without rules |",
            "|---|---:|---|---:|---:|",
        ]
        for tier, row in recommended.items():
            genres = ", ".join(f"{genre} {share:.0%}" for genre, share in row["genres"][:4])
            lines.append(
                f"| {tier} | {row['users']} | {genres} | {row['mean_popularity_rank']:.0f} "
                f"| {row['mean_popularity_rank_without_rules']:.0f} |"
            )
    lines += ["", f"commit {report['commit']}, {report['seconds']:.0f} s", ""]
    return "\n".join(lines)


def _top_genres(recommended: dict, count: int) -> list[str]:
    """The genres most recommended over all tiers together."""
    total: dict[str, float] = {}
    for row in recommended.values():
        for genre, share in row["genres"]:
            total[genre] = total.get(genre, 0.0) + share
    return sorted(total, key=total.get, reverse=True)[:count]  # type: ignore[arg-type]


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return bench_report.write_outputs(report, json_path, plot, summary)
