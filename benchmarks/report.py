"""Every benchmark publishes the same three files: the report as JSON, a PNG plot and a markdown summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


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
