"""`cascade report`: one report of the system's quality and speed, reproducible from one command.

Runs every offline evaluation on the configured data set and its current artifacts (recall with its
baselines, ranking, the whole pipeline, rating RMSEs) and gathers the latest latency figures that
`cascade bench serve` and `cascade bench stages` left under benchmarks/results, into JSON + PNG + markdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cascade.bench import report as bench_report
from cascade.config import AppConfig
from cascade.training import evaluate

logger = logging.getLogger(__name__)

RESULTS_DIR = Path("benchmarks/results")
RECALL_METRICS = ("recall@10", "recall@50", "recall@100", "recall@500", "ndcg@10", "coverage")
PIPELINE_METRICS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "coverage")
RANKING_METRICS = ("auc", "gauc", "ndcg@10", "recall@10", "train_seconds")
SECTIONS: dict[str, Callable[..., dict]] = {
    "recall": evaluate.evaluate_recall,
    "ranking": evaluate.evaluate_ranking,
    "pipeline": evaluate.evaluate_pipeline,
    "rating": evaluate.evaluate_rating,
}


def latest_latency(results_dir: Path) -> dict:
    """The newest serve and stages benchmark of each scenario under ``results_dir``, summarised."""
    out: dict[str, dict] = {}
    for path in sorted(results_dir.glob("serve-*.json")) + sorted(results_dir.glob("stages-*.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        entry = {
            "file": str(path),
            "modified": time.strftime("%Y-%m-%d %H:%M", time.gmtime(path.stat().st_mtime)),
        }
        if raw.get("benchmark") == "serve":
            entry |= {k: v for k, v in raw.get("summary", {}).items() if not isinstance(v, list)}
        elif raw.get("benchmark") == "stages":
            entry |= {"total_" + k: v for k, v in raw.get("total_ms", {}).items()}
        else:
            continue
        out[path.stem] = entry
    return out


def run(config: AppConfig, say: Callable[[str], None], sections: tuple[str, ...] = tuple(SECTIONS)) -> dict:
    report: dict = {"dataset": config.data.dataset, "seed": config.seed}
    for name in sections:
        say(f"evaluating {name}")
        started = time.perf_counter()
        report[name] = SECTIONS[name](config)
        report[f"{name}_seconds"] = time.perf_counter() - started
    report["latency"] = latest_latency(RESULTS_DIR)
    return report


def _systems(section: dict) -> dict[str, dict]:
    return {
        name: values for name, values in section.items() if isinstance(values, dict) and "grid" not in name
    }


def _table(section: dict, metrics: tuple[str, ...]) -> list[str]:
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in _systems(section).items():
        cells = (f"{values[m]:.4f}" if m in values else "" for m in metrics)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def summary(report: dict) -> str:
    lines = [f"# Cascade report: {report['dataset']}", "", f"Seed {report['seed']}; held-out temporal split."]
    for name, metrics in (
        ("recall", RECALL_METRICS),
        ("pipeline", PIPELINE_METRICS),
        ("ranking", RANKING_METRICS),
    ):
        if name in report:
            lines += ["", f"## {name.capitalize()}", "", *_table(report[name], metrics)]
    if "rating" in report:
        lines += ["", "## Rating RMSE (random 90/10 split)", "", "| model | rmse |", "|---|---:|"]
        lines += [f"| {m} | {v['rmse']:.4f} |" for m, v in _systems(report["rating"]).items()]
    lines += ["", "## Latest latency figures", ""]
    if report["latency"]:
        for name, entry in report["latency"].items():
            figures = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in entry.items()
                if k not in ("file", "modified")
            )
            lines.append(f"- {name} ({entry['modified']} UTC): {figures}")
    else:
        lines.append(f"none under {RESULTS_DIR}: run `cascade bench serve` and `cascade bench stages`.")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, m) for n, m in (("recall", "recall@100"), ("pipeline", "ndcg@10")) if n in report]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.8), squeeze=False)
    for ax, (name, metric) in zip(axes[0], panels):
        systems = {s: v[metric] for s, v in _systems(report[name]).items() if metric in v}
        ax.barh(list(systems), list(systems.values()))
        ax.set_title(f"{name}: {metric}")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return bench_report.write_outputs(report, json_path, plot, summary)
