"""What every benchmark shares: timings summarised as percentiles, and the same three files published (the
report as JSON, a PNG plot and a markdown summary)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def percentiles(
    values: Sequence[float] | np.ndarray,
    points: Sequence[float] = (50.0, 99.0),
    suffix: str = "",
    mean: bool = True,
) -> dict[str, float]:
    """{"p50<suffix>": ..., "p99<suffix>": ..., "mean<suffix>": ...} of ``values``; NaN for no values."""
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{p:g}{suffix}": float(np.percentile(arr, p)) if len(arr) else float("nan") for p in points}
    if mean:
        out[f"mean{suffix}"] = float(arr.mean()) if len(arr) else float("nan")
    return out


def write_outputs(
    report: dict, json_path: Path, plot: Callable[[dict, Path], None], summary: Callable[[dict], str]
) -> dict[str, Path]:
    """Write ``json_path`` and, beside it, the .png and .md of the same name -> kind: path."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    png, md = json_path.with_suffix(".png"), json_path.with_suffix(".md")
    plot(report, png)
    md.write_text(summary(report))
    return {"json": json_path, "png": png, "markdown": md}
