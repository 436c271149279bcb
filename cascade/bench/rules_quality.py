"""`cascade bench rules`: what business rules cost in relevance and buy in diversity, on the held-out window.

The pipeline is replayed once per held-out user (``training.evaluate.evaluate_rule_sets``); every rule set
reorders the same ranked candidates: no rules, MMR alone at each lambda of the sweep, and the rules files
given. The plot puts NDCG@10 against intra-list diversity; the markdown says each set's change from no
rules.
"""

from __future__ import annotations

import time
from pathlib import Path

from cascade.bench import report as bench_report
from cascade.config import AppConfig
from cascade.core.artifacts import git_commit
from cascade.rerank.rules_file import RulesFile, load_rules, parse_rules
from cascade.training.evaluate import evaluate_rule_sets

MMR_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
NO_RULES = "pipeline"  # evaluate_rule_sets' name for the pipeline without rules
METRICS = ("ndcg@10", "recall@10", "recall@100", "coverage", "intra_list_diversity@10", "genre_entropy@10",
           "novelty@10")  # fmt: skip


def mmr_rules(weight: float) -> RulesFile:
    return parse_rules(f'version = "mmr-{weight:g}"\n[[rules]]\nkind = "mmr"\nlambda = {weight}\n')


def run(config: AppConfig, rules_files: list[Path], mmr_sweep: bool = True) -> dict:
    """The report: a row per rule set, each with its metrics and their change from no rules."""
    started = time.perf_counter()
    sets: dict[str, RulesFile | None] = {}
    if mmr_sweep:
        sets |= {f"mmr lambda={weight:g}": mmr_rules(weight) for weight in MMR_LAMBDAS}
    sets |= {f"file {path}": load_rules(path) for path in rules_files}
    evaluated = evaluate_rule_sets(config, sets)
    base = evaluated[NO_RULES]
    rows = {}
    for name, values in evaluated.items():
        row = {metric: values[metric] for metric in METRICS if metric in values}
        for metric in ("ndcg@10", "intra_list_diversity@10"):
            row[f"{metric}_change"] = values[metric] / base[metric] - 1 if base[metric] else float("nan")
        rows["no rules" if name == NO_RULES else name] = row
    return {
        "dataset": config.data.dataset,
        "users": int(base.get("users", 0)),
        "mmr_lambdas": list(MMR_LAMBDAS) if mmr_sweep else [],
        "rules_files": [str(path) for path in rules_files],
        "versions": {name: rules.version for name, rules in sets.items() if rules is not None},
        "rows": rows,
        "commit": git_commit(),
        "seconds": time.perf_counter() - started,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    figure, axes = plt.subplots(figsize=(7, 5))
    sweep = [(float(name.split("=")[1]), row) for name, row in rows.items() if name.startswith("mmr lambda=")]
    if sweep:
        xs = [row["intra_list_diversity@10"] for _, row in sweep]
        ys = [row["ndcg@10"] for _, row in sweep]
        axes.plot(xs, ys, "o-", label="MMR alone")
        for (weight, _), x, y in zip(sweep, xs, ys):
            axes.annotate(f"λ={weight:g}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    base = rows["no rules"]
    axes.plot([base["intra_list_diversity@10"]], [base["ndcg@10"]], "ks", label="no rules")
    for name, row in rows.items():
        if name.startswith("file "):
            axes.plot([row["intra_list_diversity@10"]], [row["ndcg@10"]], "*", markersize=12, label=name[5:])
    axes.axhline(base["ndcg@10"] * 0.98, color="grey", linestyle=":", linewidth=1, label="NDCG@10 -2%")
    axes.axvline(base["intra_list_diversity@10"] * 1.2, color="grey", linestyle="--", linewidth=1,
                 label="diversity +20%")  # fmt: skip
    axes.set_xlabel("intra-list diversity of the top 10 (mean pairwise cosine distance)")
    axes.set_ylabel("NDCG@10")
    axes.set_title(f"Rules: relevance against diversity ({report['dataset']}, {report['users']} users)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary(report: dict) -> str:
    lines = [
        f"# Rules: relevance against diversity ({report['dataset']}, {report['users']} held-out users)",
        "",
        "| rule set | NDCG@10 | change | intra-list diversity | change | genre entropy | novelty "
        "| coverage |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {row['ndcg@10']:.4f} | {row['ndcg@10_change']:+.1%} "
            f"| {row['intra_list_diversity@10']:.3f} | {row['intra_list_diversity@10_change']:+.1%} "
            f"| {row.get('genre_entropy@10', float('nan')):.2f} | {row.get('novelty@10', float('nan')):.2f} "
            f"| {row.get('coverage', float('nan')):.3f} |"
        )
    lines += ["", f"commit {report['commit']}, {report['seconds']:.0f} s", ""]
    return "\n".join(lines)


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return bench_report.write_outputs(report, json_path, plot, summary)
