"""The guard's offline jobs: `cascade guard scan` (flag coordinated fake profiles in the data set, which every
offline input then leaves out), and `cascade train guard` (the detector RecordEvent scores live profiles
with)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, fingerprint
from cascade.core.schema import SCHEMA_VERSION
from cascade.core.seeding import seed_everything
from cascade.data.dataset import Dataset
from cascade.data.exclusions import Exclusions, GuardExclusions
from cascade.guard.detector import GUARD, ScanResult, ShillingDetector, scan
from cascade.training.prepare import reuse_current

logger = logging.getLogger(__name__)

# a data set with fewer users than this is not scanned: too few to fit a detector on, or to hide a group in
MIN_SCAN_USERS = 50


def rating_range_of(dataset: Dataset) -> tuple[float, float]:
    ratings = dataset.interactions["rating"].to_numpy(dtype=np.float64)
    return (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 1.0)


def scan_fingerprint(config: AppConfig) -> str:
    """What a scan's verdict depends on: the data set as fetched and the scan's settings."""
    settings = config.guard.model_dump(
        mode="json",
        include={"screen_score", "min_group", "min_group_share", "scan_folds", "scan_passes"},
    )
    return fingerprint("guard-scan", Dataset.fingerprint_of(config.data.path, exclusions=False), config.seed,
                       settings)  # fmt: skip


@dataclass(frozen=True)
class ScanReport:
    users: int
    flagged: list[dict]  # user_id, score, pushed_item; most suspicious first
    seconds: float
    skipped: str | None = None  # why nothing was scanned


def guard_scan(config: AppConfig) -> ScanReport:
    """Scan the configured data set (as fetched, before any exclusion) and record the flagged profiles as
    its guard exclusions, replacing the last scan's."""
    started = time.perf_counter()
    seed_everything(config.seed)
    dataset = Dataset.load(config.data.path, exclusions=False, pseudonyms=config.pseudonyms())
    users = int(dataset.interactions["user_id"].nunique())
    wanted = scan_fingerprint(config)
    if users < MIN_SCAN_USERS:
        reason = f"{users} users is below {MIN_SCAN_USERS}: too few to scan"
        Exclusions(GuardExclusions(scanned=wanted)).save(config.data.path)
        return ScanReport(users, [], time.perf_counter() - started, skipped=reason)
    reasons = scan_as_configured(config, dataset).reasons()
    flagged = [
        {
            "user_id": str(row.user_id),
            "score": round(float(row.score), 4),
            "pushed_item": str(row.pushed_item),
        }
        for row in reasons.itertuples(index=False)
    ]
    Exclusions(
        GuardExclusions(
            users=tuple(entry["user_id"] for entry in flagged), reasons=tuple(flagged), scanned=wanted
        )
    ).save(config.data.path)
    logger.info("guard scan of %s: %d of %d profiles flagged", config.data.dataset, len(flagged), users)
    return ScanReport(users, flagged, time.perf_counter() - started)


def scan_as_configured(config: AppConfig, dataset: Dataset) -> ScanResult:
    """``dataset``'s users scanned with the config's seed and guard settings (``detector.scan``)."""
    gc = config.guard
    return scan(
        dataset.interactions,
        dataset.users,
        dataset.items,
        rating_range_of(dataset),
        config.seed,
        gc.screen_score,
        min_group=gc.min_group,
        min_group_share=gc.min_group_share,
        folds=gc.scan_folds,
        passes=gc.scan_passes,
    )


def scan_if_stale(config: AppConfig) -> ScanReport | None:
    """Before training: scan when ``guard.scan_before_training`` and the data set or the scan's settings
    changed since the last scan; None when nothing was scanned."""
    if not config.guard.scan_before_training:
        return None
    if Exclusions.load(config.data.path).guard.scanned == scan_fingerprint(config):
        return None
    return guard_scan(config)


def train_guard(config: AppConfig, force: bool = False) -> ArtifactRef:
    """Fit the detector on the configured data set (its exclusions left out) and publish it (kind
    ``guard``): what RecordEvent scores a live profile with."""
    scan_if_stale(config)
    store = config.artifact_store()
    data_fp = Dataset.fingerprint_of(config.data.path)
    wanted = fingerprint(GUARD, SCHEMA_VERSION, data_fp, config.seed)
    if (ref := reuse_current(store, GUARD, wanted, force)) is not None:
        return ref
    seed_everything(config.seed)
    dataset = Dataset.load(config.data.path, pseudonyms=config.pseudonyms())
    started = time.perf_counter()
    detector = ShillingDetector.fit(
        dataset.interactions, dataset.users, dataset.items, rating_range_of(dataset), config.seed
    )
    return store.publish(
        GUARD,
        detector.write,
        fingerprint=wanted,
        config=config.model_dump(mode="json"),
        schema_version=SCHEMA_VERSION,
        metrics={"fit_seconds": time.perf_counter() - started},
        extra={
            "dataset": {"name": config.data.dataset, "fingerprint": data_fp},
            "integer_item_ids": bool(dataset.items["item_id"].dtype.kind in "iu"),
        },
    )
