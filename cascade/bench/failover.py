"""`cascade bench failover`: the feature store as serving uses it (bounded waits, breaker, stale cache) on a
replicated Redis whose master is killed under load: a Redis Cluster of 3 masters and 3 replicas, and a
Sentinel group of one master, one replica and three sentinels.

Writers record events with ids, readers read users, both through ``ResilientFeatureStore`` as a server
does. The report says how long the replica took to be promoted, how long writes to the killed master's
users were refused (UNAVAILABLE, retryable) and reads answered from the stale cache, what the other
shards' users saw meanwhile, and how many acknowledged events the promoted replica lacks (checked one by
one). Each deployment runs with ``replica_acks`` 1 (an event waits for its replica) and 0, side by side.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from redis.crc import key_slot

from cascade.bench.redis_cluster import RedisClusterProcesses, RedisSentinelGroup
from cascade.bench.report import write_outputs as write_report_files
from cascade.core.errors import DependencyUnavailableError
from cascade.core.privacy import Pseudonymiser
from cascade.serving.feature_store import HistoryEvent
from cascade.serving.feature_store.redis_store import RedisFeatureStore
from cascade.serving.feature_store.resilient import ResilientFeatureStore

logger = logging.getLogger(__name__)

HISTORY = 50
USERS = 2_000
BUCKET_S = 0.1  # the timeline's resolution


@dataclass(frozen=True)
class FailoverSettings:
    before_s: float = 2.0  # load before the kill
    after_s: float = 3.0  # load once writes to the killed master's users are acknowledged again
    writers: int = 4
    readers: int = 2
    timeout_ms: float = 100.0  # serving.feature_store.timeout_ms
    node_timeout_ms: int = 1000  # cluster-node-timeout; Sentinel's down-after-milliseconds
    seed: int = 42


@dataclass
class _Call:
    at: float  # time.monotonic(), then seconds since the kill (negative before)
    kind: str  # "write" or "read"
    victim: bool  # the user's keys are on the killed master
    outcome: str  # write: ack / refused; read: fresh / stale_features / feature_store_unavailable
    key: tuple[int, str] | None = None  # (user, event id) of an acknowledged write
    reason: str = ""  # why a write was refused


def run(work_dir: Path, settings: FailoverSettings, progress=lambda message: None) -> dict:
    rows = []
    for kind in ("cluster", "sentinel"):
        for replica_acks in (1, 0):
            progress(f"{kind}, replica_acks={replica_acks}")
            folder = work_dir / f"{kind}-acks{replica_acks}"
            shutil.rmtree(folder, ignore_errors=True)
            rows.append(_run_one(kind, replica_acks, folder, settings))
    return {"benchmark": "failover", "settings": asdict(settings), "rows": rows}


def _deployment(kind: str, folder: Path, settings: FailoverSettings):
    if kind == "cluster":
        return RedisClusterProcesses(folder, node_timeout_ms=settings.node_timeout_ms, fsync="everysec")
    return RedisSentinelGroup(folder, down_after_ms=settings.node_timeout_ms, fsync="everysec")


def _run_one(kind: str, replica_acks: int, folder: Path, settings: FailoverSettings) -> dict:
    pseudonyms = Pseudonymiser(b"failover-benchmark-key")
    rng = random.Random(settings.seed)
    with _deployment(kind, folder, settings) as deployment:
        timeout_s = settings.timeout_ms / 1e3
        backend = RedisFeatureStore.from_url(
            deployment.url, cache_size=0, timeout_s=timeout_s, pseudonyms=pseudonyms,
            replica_acks=replica_acks, replica_ack_timeout_s=timeout_s / 2,
        )  # fmt: skip
        store = ResilientFeatureStore(backend, timeout_s=timeout_s)
        for user in range(USERS):  # every user has a history, so that reads fill the stale cache
            store.record_event(user, HistoryEvent(user, 1, 1), HISTORY, f"seed-{user}", 3600)
        tags = {user: f"{{u:{pseudonyms.of(user)}}}" for user in range(USERS)}
        if kind == "cluster":
            victim = deployment.master_of(tags[0].encode())
            slots = _slots_of(deployment, victim)
            on_victim = {user for user, tag in tags.items() if key_slot(tag.encode()) in slots}
        else:
            victim, on_victim = deployment.master, set(tags)
        calls: list[_Call] = []
        lock = threading.Lock()
        stop = threading.Event()
        now = time.monotonic

        def write(worker: int) -> None:
            n = 0
            while not stop.is_set():
                user = rng.randrange(USERS)
                event_id = f"w{worker}-{n}"
                try:
                    store.record_event(user, HistoryEvent(100_000 + n, 1, 2 + n), HISTORY, event_id, 3600)
                    call = _Call(now(), "write", user in on_victim, "ack", (user, event_id))
                except DependencyUnavailableError as exc:
                    reason = str(exc).partition("(")[2].partition(")")[0] or "breaker open"
                    call = _Call(now(), "write", user in on_victim, "refused", reason=reason)
                    time.sleep(0.005)
                with lock:
                    calls.append(call)
                n += 1

        def read() -> None:
            while not stop.is_set():
                user = rng.randrange(USERS)
                lookup = store.read_user(user, HISTORY, wait_s=timeout_s)
                outcome = lookup.degraded_reason or ("fresh" if lookup.state is not None else "miss")
                with lock:
                    calls.append(_Call(now(), "read", user in on_victim, outcome))

        for user in range(USERS):  # the stale cache holds every user, as a busy server's would
            store.read_user(user, HISTORY, wait_s=timeout_s)
        threads = [threading.Thread(target=write, args=(i,)) for i in range(settings.writers)]
        threads += [threading.Thread(target=read) for _ in range(settings.readers)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(settings.before_s)
            victim.kill()
            killed_at = time.monotonic()
            if kind == "cluster":
                promoted_s = deployment.wait_for_new_master(tags[0].encode(), victim)
            else:
                promoted_s = deployment.wait_for_new_master(victim)
            deadline = time.monotonic() + 30
            while not _victim_writes_back(calls, lock, killed_at) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(settings.after_s)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        for call in calls:
            call.at -= killed_at
        lost = _lost(backend, [call.key for call in calls if call.key is not None])
        backend.close()
    return _row(kind, replica_acks, calls, promoted_s, lost)


def _slots_of(cluster: RedisClusterProcesses, node) -> set[int]:
    client = cluster.client(node)
    try:
        return {
            slot
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS")
            if int(master[1]) == node.port
            for slot in range(start, end + 1)
        }
    finally:
        client.close()


def _victim_writes_back(calls: list[_Call], lock: threading.Lock, killed_at: float) -> bool:
    """A write to the killed master's users acknowledged after one was refused."""
    with lock:
        refused = [
            c.at
            for c in calls
            if c.kind == "write" and c.victim and c.at >= killed_at and c.outcome == "refused"
        ]
        return bool(refused) and any(
            c.kind == "write" and c.victim and c.outcome == "ack" and c.at > refused[-1] for c in calls[-200:]
        )


def _lost(backend: RedisFeatureStore, acknowledged: list[tuple[int, str]]) -> int:
    """Acknowledged events whose id key the store lacks: the event script writes both in one step."""
    keyspace = backend.keyspace
    missing = 0
    for begin in range(0, len(acknowledged), 1000):
        pipe = backend.client.pipeline(transaction=False)
        for user, event_id in acknowledged[begin : begin + 1000]:
            pipe.exists(keyspace.event_key(backend.tag(user), event_id))
        missing += sum(not found for found in pipe.execute())
    return missing


def _row(kind: str, replica_acks: int, calls: list[_Call], promoted_s: float, lost: int) -> dict:
    writes = [c for c in calls if c.kind == "write"]
    reads = [c for c in calls if c.kind == "read"]
    victim_refused = [c.at for c in writes if c.victim and c.outcome == "refused" and c.at >= 0]
    others = [c for c in writes if not c.victim and c.at >= 0 and c.at <= (max(victim_refused, default=0))]
    outage_reads = [c for c in reads if c.victim and 0 <= c.at <= max(victim_refused, default=0)]
    before = [c for c in writes if c.at < 0]
    span = max((c.at for c in calls if c.at < 0), default=0) - min((c.at for c in calls), default=0)
    end = max(c.at for c in calls)
    buckets = np.arange(min(c.at for c in calls), end + BUCKET_S, BUCKET_S)
    acked_at = np.array([c.at for c in writes if c.outcome == "ack"])
    refused_at = np.array([c.at for c in writes if c.outcome == "refused"])
    return {
        "deployment": kind,
        "replica_acks": replica_acks,
        "promoted_s": round(promoted_s, 3),
        "victim_writes_refused_for_s": round(max(victim_refused, default=0.0), 3),
        "writes_acknowledged": sum(c.outcome == "ack" for c in writes),
        "writes_refused": sum(c.outcome == "refused" for c in writes),
        "acknowledged_lost": lost,
        "other_shards_writes_during_outage": {
            "acknowledged": sum(c.outcome == "ack" for c in others),
            "refused": sum(c.outcome == "refused" for c in others),
            "refused_by_reason": dict(Counter(c.reason for c in others if c.outcome == "refused")),
        },
        "victim_reads_during_outage": {
            outcome: sum(c.outcome == outcome for c in outage_reads)
            for outcome in ("fresh", "stale_features", "feature_store_unavailable", "miss")
        },
        "writes_per_s_before": round(len(before) / span, 1) if span > 0 else None,
        "timeline": {
            "bucket_s": BUCKET_S,
            "start_s": round(float(buckets[0]), 3),
            "acknowledged": np.histogram(acked_at, buckets)[0].tolist(),
            "refused": np.histogram(refused_at, buckets)[0].tolist(),
        },
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.2 * len(rows)), sharex=True)
    for ax, row in zip(np.atleast_1d(axes), rows):
        line = row["timeline"]
        x = line["start_s"] + np.arange(len(line["acknowledged"])) * line["bucket_s"]
        ax.plot(x, np.array(line["acknowledged"]) / line["bucket_s"], label="acknowledged/s")
        ax.plot(x, np.array(line["refused"]) / line["bucket_s"], label="refused/s (UNAVAILABLE)")
        ax.axvline(0, color="red", linestyle="--", label="master killed")
        ax.axvline(row["promoted_s"], color="green", linestyle=":", label="replica promoted")
        ax.set_title(
            f"{row['deployment']}, replica_acks={row['replica_acks']}: lost {row['acknowledged_lost']}"
        )
        ax.set_ylabel("writes/s")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel("seconds since the kill")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Failover of the feature store (`cascade bench failover`)",
        "",
        f"{s['writers']} writers and {s['readers']} readers through the serving store (timeout "
        f"{s['timeout_ms']:g} ms); the master is SIGKILLed after {s['before_s']:g} s; node timeout "
        f"{s['node_timeout_ms']} ms.",
        "",
        "| deployment | replica_acks | promoted after | killed master's writes refused for | "
        "acknowledged | refused | lost | other shards during the outage (ack/refused) | "
        "killed master's reads (fresh/stale/none) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in report["rows"]:
        others, reads = row["other_shards_writes_during_outage"], row["victim_reads_during_outage"]
        unanswered = reads["feature_store_unavailable"] + reads["miss"]
        lines.append(
            f"| {row['deployment']} | {row['replica_acks']} | {row['promoted_s']:.2f} s | "
            f"{row['victim_writes_refused_for_s']:.2f} s | {row['writes_acknowledged']} | "
            f"{row['writes_refused']} | {row['acknowledged_lost']} | "
            f"{others['acknowledged']}/{others['refused']} | "
            f"{reads['fresh']}/{reads['stale_features']}/{unanswered} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report_files(report, json_path, plot, summary)
