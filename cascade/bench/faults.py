"""`cascade bench faults`: the service under steady open-loop load while each fault is injected, measured
from the client's side: JSON, a PNG timeline (latency and status code of every request around each fault)
and a markdown table of each row against its target.

The service runs as `cascade serve` in a child process against a redis-server of the harness's own (so
that it can be killed, paused and restarted), on the scenario's models (built when missing). Rows run in
order; the last one stops the service with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.bench import report as report_io
from cascade.bench.ports import free_port
from cascade.bench.redis_process import RedisProcess
from cascade.bench.serve_load import _run_punctually, running_service, scenario_user_ids
from cascade.config import AppConfig
from cascade.core.artifacts import ArtifactRef, ArtifactStore
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.client import CascadeClient

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"].full_name


@dataclass(frozen=True)
class FaultSettings:
    rate: float | None = None  # Recommend requests per second; None: load_share of the measured capacity
    load_share: float = 0.5
    event_rate: float = 10.0  # RecordEvent requests per second, beside them
    timeout_s: float = 0.5  # every call's deadline, unless a row sets its own
    before_s: float = 4.0  # load before each fault
    outage_s: float = 10.0  # Redis killed this long
    pause_s: float = 4.0  # Redis paused this long
    after_s: float = 6.0  # load after each fault
    deadline_rows_s: float = 8.0
    deadline_rate: float = 100.0  # Recommend requests per second in the short-deadline rows
    overload_factor: float = 3.0
    overload_s: float = 10.0
    fuzz_requests: int = 10_000
    rows: tuple[str, ...] | None = None  # the rows to run, by name (see ``run``); None: all
    seed: int = 0


@dataclass
class Call:
    method: str
    sent_s: float  # scheduled send time from the row's start
    latency_ms: float  # from the scheduled time to the answer (what a caller on schedule waits)
    code: str
    call_ms: float = 0.0  # from the call's actual start to its answer: what its gRPC deadline bounds
    degraded: list[str] = field(default_factory=list)
    duplicate: bool = False
    event_id: str = ""


# --------------------------------------------------------------------------------------------- the driver


def _recommend(user: int) -> pb.RecommendRequest:
    return pb.RecommendRequest(user_id=str(user), k=20)


async def _drive(
    target: str,
    schedule: list[tuple[float, str, object, float]],
    actions: list[tuple[float, Callable[[], None]]] = (),
    channels: int = 8,
) -> list[Call]:
    """Send each (offset s, method, request, timeout s) at its time without waiting for earlier answers,
    and run each (offset s, action) in a thread at its time (a fault, a recovery). A method is one of the
    Recommender's, or "Check": a health check."""
    loop = asyncio.get_running_loop()
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [pb_grpc.RecommenderStub(channel) for channel in chans]
    health_stubs = [health_pb2_grpc.HealthStub(channel) for channel in chans]
    calls: list[Call | None] = [None] * len(schedule)
    start = loop.time() + 0.1

    async def one(i: int, offset: float, method: str, request, timeout: float) -> None:
        scheduled = start + offset
        call = Call(method, offset, 0.0, "")
        began = loop.time()
        try:
            stub = (health_stubs if method == "Check" else stubs)[i % len(stubs)]
            reply = await getattr(stub, method)(request, timeout=timeout)
            call.code = "OK"
            if method == "Recommend":
                call.degraded = list(reply.degraded_reasons)
            elif method == "RecordEvent":
                call.duplicate, call.event_id = reply.duplicate, request.event_id
        except grpc.aio.AioRpcError as exc:
            call.code = exc.code().name
            if method == "RecordEvent":
                call.event_id = request.event_id
        call.latency_ms = (loop.time() - scheduled) * 1e3
        call.call_ms = (loop.time() - began) * 1e3
        calls[i] = call

    for offset, action in actions:
        loop.call_at(start + offset, lambda action=action: loop.run_in_executor(None, action))
    tasks = []
    for i, (offset, method, request, timeout) in enumerate(schedule):
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, offset, method, request, timeout)))
    await asyncio.gather(*tasks)
    last_action = max((offset for offset, _ in actions), default=0.0)
    while loop.time() < start + last_action + 0.05:  # an action scheduled after the last request
        await asyncio.sleep(0.05)
    for channel in chans:
        await channel.close()
    return [call for call in calls if call is not None]


def _mixed_schedule(
    duration_s: float,
    settings: FaultSettings,
    users: np.ndarray,
    rng: np.random.Generator,
    row: str,
    timeout_s: float | None = None,
    rate: float | None = None,
    events: bool = True,
) -> list[tuple[float, str, object, float]]:
    """Recommends at ``rate`` and, with ``events``, RecordEvents with idempotency keys at event_rate."""
    timeout = settings.timeout_s if timeout_s is None else timeout_s
    rate = settings.rate if rate is None else rate
    schedule = [
        (i / rate, "Recommend", _recommend(int(rng.choice(users))), timeout)
        for i in range(int(duration_s * rate))
    ]
    if events:
        for i in range(int(duration_s * settings.event_rate)):
            request = pb.RecordEventRequest(
                user_id=str(int(rng.choice(users))),
                item_id=str(int(rng.integers(1, 200))),
                event_type=pb.EVENT_TYPE_CLICK,
                event_id=f"{row}-{i}-{rng.integers(1 << 62)}",
            )
            schedule.append((i / settings.event_rate, "RecordEvent", request, timeout))
    schedule.sort(key=lambda entry: entry[0])
    return schedule


def _latency(calls: list[Call], code: str | None = None) -> dict[str, float]:
    values = [c.latency_ms for c in calls if code is None or c.code == code]
    return report_io.percentiles(values) if values else {}


def _codes(calls: list[Call]) -> dict[str, int]:
    return dict(Counter(c.code for c in calls))


def _lost_events(target: str, calls: list[Call], sent: dict[str, pb.RecordEventRequest]) -> int:
    """Each acknowledged RecordEvent sent again with its id must come back a duplicate: stored once."""
    acknowledged = [c for c in calls if c.method == "RecordEvent" and c.code == "OK" and not c.duplicate]
    lost = 0
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for call in acknowledged:
            lost += not stub.RecordEvent(sent[call.event_id], timeout=5).duplicate
    return lost


def _timeline(calls: list[Call], faults: list[tuple[float, float, str]]) -> dict:
    """What the PNG draws: each call's send time, latency and code; the fault windows."""
    return {
        "sent_s": [round(c.sent_s, 4) for c in calls],
        "latency_ms": [round(c.latency_ms, 3) for c in calls],
        "code": [c.code if not c.degraded else "OK (degraded)" for c in calls],
        "method": [c.method for c in calls],
        "faults": [{"start_s": s, "end_s": e, "label": label} for s, e, label in faults],
    }


# ---------------------------------------------------------------------------------------------- the rows


@dataclass
class Row:
    fault: str
    target: str
    passed: bool
    measured: str
    figures: dict
    timeline: dict | None = None


def _row_redis_killed(target, redis_process, settings, users, rng) -> Row:
    duration = settings.before_s + settings.outage_s + settings.after_s
    schedule = _mixed_schedule(duration, settings, users, rng, "kill")
    sent = {request.event_id: request for _, method, request, _ in schedule if method == "RecordEvent"}
    restarted = settings.before_s + settings.outage_s
    calls = _run_punctually(
        _drive(target, schedule, [(settings.before_s, redis_process.kill), (restarted, redis_process.start)])
    )
    recommends = [c for c in calls if c.method == "Recommend"]
    events = [c for c in calls if c.method == "RecordEvent"]
    in_outage = [c for c in recommends if settings.before_s + 0.2 < c.sent_s < restarted]
    errors = sum(c.code != "OK" for c in recommends)
    degraded_in_outage = sum(bool(c.degraded) for c in in_outage)
    # recovery: from the restart to the first answer after which every answer is whole again
    after = [c for c in recommends if c.sent_s >= restarted]
    recovered_at = None
    for i, call in enumerate(after):
        if all(not c.degraded and c.code == "OK" for c in after[i:]):
            recovered_at = call.sent_s
            break
    recovery_s = (recovered_at - restarted) if recovered_at is not None else float("inf")
    event_codes = _codes(events)
    lost = _lost_events(target, events, sent)
    passed = (
        errors == 0
        and degraded_in_outage == len(in_outage)
        and set(event_codes) <= {"OK", "UNAVAILABLE"}
        and recovery_s <= 2.0
        and lost == 0
    )
    return Row(
        "Redis killed for 10 s under load, then restarted",
        "0 errors on Recommend (all degraded, flagged), RecordEvent UNAVAILABLE only; back to "
        "non-degraded within 2 s of Redis returning; no acknowledged event lost",
        passed,
        f"Recommend: {errors} errors of {len(recommends)}, {degraded_in_outage}/{len(in_outage)} degraded "
        f"during the outage; RecordEvent {event_codes}; whole again {recovery_s:.2f} s after the restart; "
        f"{lost} acknowledged events lost",
        {
            "recommend_codes": _codes(recommends),
            "recommend_errors": errors,
            "degraded_during_outage": degraded_in_outage,
            "recommends_during_outage": len(in_outage),
            "degraded_reasons": dict(Counter(r for c in recommends for r in c.degraded)),
            "record_event_codes": event_codes,
            "recovery_s": recovery_s,
            "acknowledged_events_lost": lost,
            "latency_ms": _latency(recommends),
        },
        _timeline(calls, [(settings.before_s, restarted, "Redis killed")]),
    )


def _row_redis_slow(target, redis_process, settings, users, rng) -> Row:
    duration = settings.before_s + settings.pause_s + settings.after_s
    deadline_ms = 100.0
    schedule = _mixed_schedule(
        duration, settings, users, rng, "slow", timeout_s=deadline_ms / 1e3, events=False
    )
    calls = _run_punctually(
        _drive(target, schedule, [(settings.before_s, lambda: redis_process.pause(settings.pause_s))])
    )
    late = [c for c in calls if c.code == "OK" and c.call_ms > deadline_ms]
    p99 = report_io.percentiles([c.call_ms for c in calls])["p99"]
    codes = _codes(calls)
    passed = not late and p99 <= deadline_ms and set(codes) <= {"OK"}
    return Row(
        f"Redis paused {settings.pause_s:.0f} s (CLIENT PAUSE), calls with a {deadline_ms:.0f} ms deadline",
        "every answer within its deadline; p99 ≤ the deadline",
        passed,
        f"{codes}; p99 {p99:.1f} ms; {len(late)} answers after the deadline; "
        f"{sum(bool(c.degraded) for c in calls)} degraded",
        {
            "codes": codes,
            "latency_ms": _latency(calls),
            "late_answers": len(late),
            "degraded_reasons": dict(Counter(r for c in calls for r in c.degraded)),
        },
        _timeline(calls, [(settings.before_s, settings.before_s + settings.pause_s, "Redis paused")]),
    )


def _row_deadline(target, settings, users, rng, deadline_ms: float, metrics_port: int) -> Row:
    """An answer that reaches the caller after its deadline is turned into DEADLINE_EXCEEDED by gRPC's core,
    which checks on arrival: every OK arrived in time. What the row shows is how many callers the server
    could not answer in time, whether the shrunk answers say so, and how many requests the server dropped
    instead of finishing for a caller who had left."""
    schedule = _mixed_schedule(
        settings.deadline_rows_s,
        settings,
        users,
        rng,
        f"deadline{deadline_ms:.0f}",
        timeout_s=deadline_ms / 1e3,
        rate=settings.deadline_rate,
        events=False,
    )
    dropped_before = _scrape_counter(metrics_port, "cascade_deadline_dropped_requests_total")
    calls = _run_punctually(_drive(target, schedule))
    dropped = _scrape_counter(metrics_port, "cascade_deadline_dropped_requests_total") - dropped_before
    ok = [c for c in calls if c.code == "OK"]
    shrunk = sum("deadline_shrunk" in c.degraded for c in ok)
    codes = _codes(calls)
    over = sum(c.call_ms > deadline_ms for c in ok)
    return Row(
        f"{deadline_ms:.0f} ms client deadlines at {settings.deadline_rate:.0f} req/s",
        "0 answers after the deadline; shrunk answers flagged",
        set(codes) <= {"OK", "DEADLINE_EXCEEDED"} and shrunk == sum(bool(c.degraded) for c in ok),
        f"{codes}: 0 answers after the deadline (gRPC turns a late one into DEADLINE_EXCEEDED); "
        f"{shrunk} of {len(ok)} answers shrunk, all flagged; the server dropped {dropped:.0f} requests whose "
        f"deadline had passed; {over} OK calls took over {deadline_ms:.0f} ms by the generator's clock, "
        "its event loop included",
        {
            "codes": codes,
            "shrunk_answers": shrunk,
            "server_dropped": dropped,
            "client_clock_over": over,
            "latency_ms": _latency(calls),
        },
        _timeline(calls, []),
    )


def _capacity(target: str, users: np.ndarray, callers: int, seconds: float = 6.0) -> float:
    """Recommends per second the service completes with ``callers`` always waiting on it (closed loop;
    no more callers than the service admits at once, or the refused ones would be counted against it)."""
    with _background_load(target, users, rate=math.inf, callers=callers) as (calls, _):
        time.sleep(seconds)
    done_s = [c.sent_s + c.latency_ms / 1e3 for c in calls if c.code == "OK"]
    settled = [t for t in done_s if 1.0 < t <= seconds]  # the first second warms up
    return len(settled) / (seconds - 1.0)


def _row_overload(target, settings, users, rng, capacity: float, check_rate: float = 50.0) -> Row:
    """3× capacity of Recommends, and beside them health checks at ``check_rate``: the quickest RPC the
    server has, whose latency is the floor that this machine (server, generator and Redis on the same
    cores) puts under any answer, a refusal included."""
    offered = capacity * settings.overload_factor
    schedule = _mixed_schedule(
        settings.overload_s, settings, users, rng, "overload", timeout_s=1.0, rate=offered, events=False
    )
    check = health_pb2.HealthCheckRequest(service="")
    schedule += [(i / check_rate, "Check", check, 1.0) for i in range(int(settings.overload_s * check_rate))]
    schedule.sort(key=lambda entry: entry[0])
    everything = _run_punctually(_drive(target, schedule, channels=16))
    calls = [c for c in everything if c.method == "Recommend"]
    checks = [c for c in everything if c.method == "Check"]
    codes = _codes(calls)
    goodput = codes.get("OK", 0) / settings.overload_s
    shed = _latency(calls, "RESOURCE_EXHAUSTED")
    shed_p99 = shed.get("p99", float("nan"))
    floor = _latency(checks, "OK")
    passed = shed_p99 <= 1.0 and goodput >= 0.9 * capacity and set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    return Row(
        f"{settings.overload_factor:.0f}× capacity for {settings.overload_s:.0f} s",
        "shed requests get RESOURCE_EXHAUSTED in ≤ 1 ms p99; goodput ≥ 90% of capacity",
        passed,
        f"capacity {capacity:.0f} req/s, offered {offered:.0f}; goodput {goodput:.0f} req/s "
        f"({goodput / capacity:.0%}); {codes}; shed p50 {shed.get('p50', float('nan')):.2f} ms, "
        f"p99 {shed_p99:.2f} ms; answered p99 {_latency(calls, 'OK').get('p99', float('nan')):.0f} ms; "
        f"a health check beside them: p50 {floor.get('p50', float('nan')):.2f} ms, "
        f"p99 {floor.get('p99', float('nan')):.2f} ms ({_codes(checks)})",
        {
            "capacity_rps": capacity,
            "offered_rps": offered,
            "goodput_rps": goodput,
            "codes": codes,
            "shed_latency_ms": shed,
            "ok_latency_ms": _latency(calls, "OK"),
            "health_check_rps": check_rate,
            "health_check_latency_ms": floor,
            "health_check_codes": _codes(checks),
        },
        _timeline(calls, [(0.0, settings.overload_s, "3× capacity")]),
    )


def republish(
    store: ArtifactStore, kind: str, version: str, parents: dict | None = None, damage=None
) -> ArtifactRef:
    """A copy of ``kind/version`` published anew (with other ``parents``), ``damage(folder)`` applied to its
    files before the manifest seals them: what anyone who can write to the store could publish."""
    source = store.get(kind, version)

    def write(folder: Path) -> None:
        for name in source.manifest["files"]:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.path / name, folder / name)
        if damage is not None:
            damage(folder)

    manifest = source.manifest
    return store.publish(
        kind,
        write,
        fingerprint=manifest["fingerprint"],
        config=manifest["config"],
        schema_version=manifest["schema_version"],
        metrics=manifest["metrics"],
        parents=parents if parents is not None else manifest["parents"],
        extra={k: v for k, v in manifest.items() if k not in _WRITTEN_BY_PUBLISH},
    )


# what ArtifactStore.publish writes into every manifest itself; the rest is the kind's own
_WRITTEN_BY_PUBLISH = frozenset(
    ("kind", "version", "created_at", "fingerprint", "schema_version", "git_commit", "config", "metrics",
     "parents", "files")
)  # fmt: skip


def truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[: max(path.stat().st_size // 3, 1)])

    return damage


def _served_versions(target: str) -> dict[str, str]:
    with CascadeClient(target, timeout_s=5) as client:
        versions = client.recommend(1, k=1).model_versions
    return {"recall": versions.recall, "index": versions.index, "ranking": versions.ranking}


def _wait_versions(target: str, want: dict[str, str], timeout_s: float = 120.0) -> float:
    started = time.monotonic()
    while _served_versions(target) != want:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"the service did not swap to {want} within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


@contextlib.contextmanager
def _background_load(target: str, users: np.ndarray, rate: float, callers: int = 1):
    """``callers`` threads each sending a Recommend every 1/``rate`` s (closed loop: never two at once)
    until the block ends; yields (the calls so far, the monotonic time they started from)."""
    calls: list[Call] = []
    stop = threading.Event()
    started = time.monotonic()

    def load(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with CascadeClient(target, timeout_s=5) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    client.recommend(int(rng.choice(users)), k=20)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                calls.append(Call("Recommend", sent - started, (time.monotonic() - sent) * 1e3, code))
                time.sleep(max(1.0 / rate - (time.monotonic() - sent), 0))

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(callers)]
    for thread in threads:
        thread.start()
    try:
        yield calls, started
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _under_load(target: str, users: np.ndarray, work: Callable[[], dict]) -> tuple[dict, list[Call]]:
    """Run ``work`` while Recommends go out at 50 req/s; its result and every call."""
    with _background_load(target, users, rate=50.0) as (calls, _):
        result = work()
    return result, calls


def _row_republish(target: str, config: AppConfig, users: np.ndarray) -> Row:
    store = config.artifact_store()

    def work() -> dict:
        before = _served_versions(target)
        index = republish(store, "index", before["index"])
        ranking = republish(store, "ranking", before["ranking"])
        swapped_s = _wait_versions(target, {**before, "index": index.version, "ranking": ranking.version})
        return {"swap_s": swapped_s}

    result, calls = _under_load(target, users, work)
    codes = _codes(calls)
    failed = sum(c.code != "OK" for c in calls)
    return Row(
        "index and ranker republished under load",
        "0 failed requests",
        failed == 0,
        f"{codes}; new versions served {result['swap_s']:.1f} s after publication",
        {"codes": codes, **result, "latency_ms": _latency(calls)},
    )


def _row_corrupt(
    target: str, config: AppConfig, users: np.ndarray, metrics_port: int, reload_interval_s: float
) -> Row:
    store = config.artifact_store()
    serving = _served_versions(target)
    ranking_files = store.get("ranking", serving["ranking"]).manifest["files"]
    recall_files = store.get("recall", serving["recall"]).manifest["files"]
    index_files = store.get("index", serving["index"]).manifest["files"]
    # the LightGBM model's text file (its parser aborts the process on a truncated one), else the first file
    model_file = next((n for n in ranking_files if n.endswith(".txt")), sorted(ranking_files)[0])
    # files serving reads (the nested split's inner models are for training the ranker only): the two-tower
    # weights (safetensors) and the co-occurrence rules (npz)
    arrays = [n for n in ("two_tower.safetensors", "cooccurrence.npz") if n in recall_files]
    index_file = next((n for n in index_files if n.endswith((".faiss", ".index"))), sorted(index_files)[0])

    def bad_set(recall_damage=None, index_damage=None, ranking_damage=None) -> None:
        """A whole new set (recall, an index built from it, a ranker trained on it), one file damaged."""
        recall = republish(store, "recall", serving["recall"], damage=recall_damage)
        parents = {"recall": recall.version}
        republish(store, "index", serving["index"], parents=parents, damage=index_damage)
        republish(store, "ranking", serving["ranking"], parents=parents, damage=ranking_damage)

    cases: list[tuple[str, bool, Callable[[], None]]] = [
        (f"ranker {model_file} truncated", True, lambda: bad_set(ranking_damage=truncate(model_file))),
        *(
            (f"recall {name} truncated", True, lambda name=name: bad_set(recall_damage=truncate(name)))
            for name in arrays[:2]
        ),
        (f"index {index_file} truncated", True, lambda: bad_set(index_damage=truncate(index_file))),
        (
            "a new recall with no ranker of its own",
            False,
            lambda: republish(store, "recall", serving["recall"]),
        ),
    ]

    def work() -> dict:
        outcomes = []
        for label, refused, publish in cases:
            before = _scrape_counter(metrics_port, "cascade_reload_failures_total")
            publish()
            started = time.monotonic()
            while refused and _scrape_counter(metrics_port, "cascade_reload_failures_total") == before:
                if time.monotonic() - started > 120:
                    break
                time.sleep(0.1)
            refused_after = time.monotonic() - started
            time.sleep(max(3 * reload_interval_s, 1.0))  # several watcher rounds: never tried again
            outcomes.append(
                {
                    "case": label,
                    "expected_refusals": int(refused),
                    "refusals": _scrape_counter(metrics_port, "cascade_reload_failures_total") - before,
                    "refused_after_s": round(refused_after, 2),
                    "still_serving_old": _served_versions(target) == serving,
                }
            )
        return {"cases": outcomes}

    try:
        result, calls = _under_load(target, users, work)
    finally:
        for kind in ("recall", "index", "ranking"):
            store.set_current(kind, serving[kind])
    failed = sum(c.code != "OK" for c in calls)
    cases_ok = all(
        case["still_serving_old"] and case["refusals"] == case["expected_refusals"]
        for case in result["cases"]
    )
    summary = "; ".join(
        f"{c['case']}: refused {c['refusals']:.0f}× ({c['refused_after_s']} s)" for c in result["cases"]
    )
    return Row(
        "a corrupt or truncated new artifact (each file kind), a recall with no ranker of its own",
        "refused, 0 failed requests, old version keeps serving, not retried until it changes",
        failed == 0 and cases_ok,
        f"{_codes(calls)}; {summary}; old versions served throughout: "
        f"{all(c['still_serving_old'] for c in result['cases'])}",
        {"codes": _codes(calls), **result},
    )


def _scrape_counter(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _row_garbage(target: str, log_path: Path) -> Row:
    log_before = log_path.read_text(errors="replace").count("\n")
    codes: Counter = Counter()
    rng = random.Random(0)
    sent = 0
    with grpc.insecure_channel(target) as channel:
        for method in ("Recommend", "RecordEvent", "SimilarItems"):
            raw = channel.unary_unary(f"/{SERVICE}/{method}")
            for _ in range(100):
                garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
                sent += 1
                try:
                    raw(garbage, timeout=5)
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
    time.sleep(0.5)
    new_lines = log_path.read_text(errors="replace").splitlines()[log_before:]
    tracebacks = sum("Traceback" in line for line in new_lines)
    # a random payload is now and then a valid message (unknown fields, empty ids): refused by validation
    about_garbage = sum("INVALID_ARGUMENT" in line for line in new_lines)
    passed = codes.get("INTERNAL", 0) == 0 and tracebacks == 0 and about_garbage == sent
    return Row(
        "garbage bytes on the wire",
        "no INTERNAL, one log line, not a traceback",
        passed,
        f"{sent} random payloads: {dict(codes)}; {about_garbage} log lines about them, "
        f"{tracebacks} tracebacks",
        {"codes": dict(codes), "sent": sent, "log_lines": about_garbage, "tracebacks": tracebacks},
    )


def _fuzz_string(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randint(1, 2000))
    if kind == 1:
        return ""
    if kind == 2:
        return str(rng.randint(-(10**20), 10**20))
    if kind == 3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40)))
    if kind == 4:
        return "x" * rng.randint(100, 5000)
    return "".join(chr(rng.randint(0x80, 0xD7FF)) for _ in range(rng.randint(1, 8)))


def _fuzz_number(rng: random.Random) -> int:
    return rng.choice((0, 1, 5, 20, -1, 10**6, 2**31 - 1, -(2**31)))


def _fuzz_request(rng: random.Random) -> tuple[str, object]:
    """A request to a random method with every field drawn from valid and invalid values."""
    method = rng.choice(("Recommend", "RecordEvent", "SimilarItems"))
    if method == "Recommend":
        demographics = pb.Demographics(
            gender=_fuzz_string(rng)[:3],
            age=_fuzz_number(rng),
            occupation=_fuzz_string(rng),
            zip_code=_fuzz_string(rng),
        )
        return method, pb.RecommendRequest(
            user_id=_fuzz_string(rng),
            k=_fuzz_number(rng),
            exclude_item_ids=[_fuzz_string(rng) for _ in range(rng.randint(0, 5))],
            request_id=_fuzz_string(rng),
            budget_ms=_fuzz_number(rng),
            demographics=demographics,
        )
    if method == "RecordEvent":
        return method, pb.RecordEventRequest(
            user_id=_fuzz_string(rng),
            item_id=_fuzz_string(rng),
            event_type=rng.choice((0, 1, 2, 3, 4, 5, -3, 99)),
            timestamp=rng.choice((0, -5, 1, 2**62, int(time.time()))),
            event_id=_fuzz_string(rng),
            rating=rng.choice((0.0, 1.0, 4.5, 6.0, -1.0, float("nan"), float("inf"))),
        )
    return method, pb.SimilarItemsRequest(
        item_id=_fuzz_string(rng), k=_fuzz_number(rng), request_id=_fuzz_string(rng)
    )


def _invalid_event(rng: random.Random) -> pb.RecordEventRequest:
    """A RecordEvent that fails validation in one field, the others valid."""
    request = pb.RecordEventRequest(
        user_id=str(rng.randint(1, 900)),
        item_id=str(rng.randint(1, 1600)),
        event_type=pb.EVENT_TYPE_CLICK,
        event_id=f"fuzz-{rng.getrandbits(60)}",
    )
    broken = rng.randrange(5)
    if broken == 0:
        request.user_id = rng.choice(("", "u" * 257, "ü" * 129))  # empty, or longer than MAX_ID_BYTES
    elif broken == 1:
        request.item_id = rng.choice(("", "99999999", "x"))
    elif broken == 2:
        request.event_type = rng.choice((0, 7, -1))
    elif broken == 3:
        request.event_type, request.rating = pb.EVENT_TYPE_RATE, rng.choice((0.0, 9.0, float("nan")))
    else:
        request.event_id = rng.choice(("has space", "x" * 200))
    return request


def _row_fuzz(target: str, redis_url: str, count: int, pid: int) -> Row:
    import redis

    rng = random.Random(7)
    client = redis.Redis.from_url(redis_url)
    digest_before = client.execute_command("DEBUG", "DIGEST")
    codes: Counter = Counter()
    invalid_writes = count // 5
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for _ in range(invalid_writes):  # writes that must be refused: Redis must not change at all
            try:
                stub.RecordEvent(_invalid_event(rng), timeout=5)
                codes["OK (invalid write accepted)"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
        digest_after = client.execute_command("DEBUG", "DIGEST")
        for _ in range(count - invalid_writes):
            method, request = _fuzz_request(rng)
            try:
                getattr(stub, method)(request, timeout=5)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    client.close()
    alive = _process_alive(pid)
    bad = codes.get("INTERNAL", 0) + codes.get("UNKNOWN", 0)
    untouched = digest_before == digest_after
    return Row(
        f"{count:,} fuzzed requests over all RPCs",
        "0 UNKNOWN / INTERNAL, 0 crashes, Redis untouched by rejected writes",
        bad == 0 and alive and untouched and "OK (invalid write accepted)" not in codes,
        f"{dict(codes)}; server alive: {alive}; "
        f"Redis unchanged by {invalid_writes:,} invalid writes: {untouched}",
        {"codes": dict(codes), "server_alive": alive, "redis_unchanged_by_rejected_writes": untouched},
    )


def _process_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _row_sigterm(target: str, pid: int, users: np.ndarray, drain_s: float) -> Row:
    """SIGTERM while four callers send; they stop a moment after health says NOT_SERVING, as a balancer
    would."""
    with _background_load(target, users, rate=100.0, callers=4) as (calls, started):
        time.sleep(2.0)
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        with CascadeClient(target, timeout_s=2) as probe:
            while probe.health() != "NOT_SERVING" and time.monotonic() - signalled < 5:
                time.sleep(0.01)
        not_serving_after = time.monotonic() - signalled
        time.sleep(min(1.0, drain_s / 2))  # a balancer's health-check interval: it still sends meanwhile
    failed = [c for c in calls if c.code != "OK"]
    return Row(
        "SIGTERM under load",
        "0 failed in-flight requests",
        not failed,
        f"{_codes(calls)}; health NOT_SERVING {not_serving_after * 1e3:.0f} ms after the signal, the port "
        f"open {drain_s:.0f} s more",
        {"codes": _codes(calls), "not_serving_after_ms": not_serving_after * 1e3},
        _timeline(calls, [(signalled - started, signalled - started + drain_s, "draining")]),
    )


# ------------------------------------------------------------------------------------------------ the run


def run(config: AppConfig, settings: FaultSettings, work_dir: Path, progress: Callable[[str], None]) -> dict:
    """Every row against one service of the scenario's models, with a Redis of its own; the service's log
    and Redis's files stay in ``work_dir``."""
    rng = np.random.default_rng(settings.seed)
    users = scenario_user_ids(config)
    metrics_port = free_port()
    drain_s, reload_interval_s = 3.0, 0.5
    rows: list[Row] = []
    capacity = float("nan")
    with RedisProcess(work_dir / "redis") as redis_process:
        serving = config.serving.model_copy(
            update={
                "port": free_port(),
                "redis_url": redis_process.url,
                "metrics_port": metrics_port,
                "reload_interval_s": reload_interval_s,
                "drain_s": drain_s,
                "processes": 1,
                "process_ports": None,
            }
        )
        cfg = config.model_copy(update={"serving": serving})
        log_path = work_dir / "server.log"
        rows_to_run: dict[str, Callable[[], Row]] = {
            "redis-killed": lambda: _row_redis_killed(target, redis_process, settings, users, rng),
            "redis-paused": lambda: _row_redis_slow(target, redis_process, settings, users, rng),
            "deadline-5ms": lambda: _row_deadline(target, settings, users, rng, 5.0, metrics_port),
            "deadline-20ms": lambda: _row_deadline(target, settings, users, rng, 20.0, metrics_port),
            "overload": lambda: _row_overload(target, settings, users, rng, capacity),
            "republish": lambda: _row_republish(target, cfg, users),
            "corrupt": lambda: _row_corrupt(target, cfg, users, metrics_port, reload_interval_s),
            "garbage": lambda: _row_garbage(target, log_path),
            "fuzz": lambda: _row_fuzz(target, redis_process.url, settings.fuzz_requests, pid),
            "sigterm": lambda: _row_sigterm(target, pid, users, drain_s),
        }
        unknown = set(settings.rows or ()) - set(rows_to_run)
        if unknown:
            raise ValueError(f"rows: no {sorted(unknown)}; the rows are {', '.join(rows_to_run)}")
        with running_service(cfg, log_path) as (target, pid):
            progress("capacity")
            admitted = config.serving.workers + config.serving.queue_size
            capacity = _capacity(target, users, callers=max(min(8, admitted), 1))
            settings = replace(settings, rate=settings.rate or round(settings.load_share * capacity))
            progress(f"capacity {capacity:.0f} Recommend/s; faults at {settings.rate:.0f} Recommend/s")
            for label, measure in rows_to_run.items():
                if settings.rows and label not in settings.rows:
                    continue
                progress(label)
                try:
                    rows.append(measure())
                except Exception as exc:  # a row that cannot finish is a miss in the table, not a lost run
                    logger.exception("row %r failed", label)
                    rows.append(Row(label, "", False, f"the row failed: {type(exc).__name__}: {exc}", {}))
    return {
        "benchmark": "faults",
        "settings": asdict(settings),
        "context": {
            "capacity_rps": capacity,
            "dataset": config.data.dataset,
            "ranker": config.ranking.type,
            "workers": config.serving.workers,
            "queue_size": config.serving.queue_size,
            "feature_store_timeout_ms": config.serving.feature_store.timeout_ms,
            "python": sys.version.split()[0],
        },
        "rows": [asdict(row) for row in rows],
    }


_CODE_COLOURS = {
    "OK": "tab:green",
    "OK (degraded)": "tab:olive",
    "UNAVAILABLE": "tab:orange",
    "RESOURCE_EXHAUSTED": "tab:purple",
    "DEADLINE_EXCEEDED": "tab:red",
}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["rows"] if row.get("timeline")]
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.6 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        line = row["timeline"]
        sent, latency, codes = np.array(line["sent_s"]), np.array(line["latency_ms"]), np.array(line["code"])
        for code in sorted(set(codes.tolist())):
            chosen = codes == code
            ax.scatter(sent[chosen], latency[chosen], s=4, label=code, color=_CODE_COLOURS.get(code, "black"))
        for fault in line["faults"]:
            ax.axvspan(fault["start_s"], fault["end_s"], color="tab:red", alpha=0.08, label=fault["label"])
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        ax.set_title(("PASS  " if row["passed"] else "MISS  ") + row["fault"], fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right", markerscale=3)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the row's start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(report: dict) -> str:
    ctx = report["context"]
    lines = [
        f"# cascade bench faults: {ctx['dataset']}, ranker {ctx['ranker']}",
        "",
        f"{report['settings']['rate']:.0f} Recommend/s and {report['settings']['event_rate']:.0f} "
        "RecordEvent/s, open loop, against `cascade serve` with a redis-server of the harness's own.",
        "",
        "| fault | target | measured | |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        verdict = "pass" if row["passed"] else "**miss**"
        lines.append(f"| {row['fault']} | {row['target']} | {row['measured']} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return report_io.write_outputs(report, json_path, plot, summary)
