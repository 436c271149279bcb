"""`cascade bench serve`: drive a running service over gRPC with an open-loop load generator.

Requests leave on a fixed arrival schedule, whatever the server does, and each request's latency is
measured from its *scheduled* send time, so a server (or a generator) that falls behind shows up as
latency instead of silently lowering the offered load (no coordinated omission). Offered rates are swept
from low to high; each rate reports latency percentiles, achieved throughput, errors by status code, and
the per-stage breakdown the server returns with every response.

The generator runs in this process, the service in another; both share the machine, so the report also
gives the CPU each of them used (and the generator can be pinned to one CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from cascade.bench import report as report_io
from cascade.bench.report import percentiles
from cascade.config import AppConfig
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.client import CascadeClient

logger = logging.getLogger(__name__)

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
STAGES = ("features", "recall", "ranking_features", "ranking", "rerank", "serialise")
SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"


@dataclass(frozen=True)
class LoadSettings:
    rates: tuple[float, ...] = (25, 50, 100, 150, 200, 300, 400)
    duration_s: float = 10.0  # per offered rate
    warmup_s: float = 3.0  # at the lowest rate, discarded
    max_requests: int = 20_000  # per offered rate, whatever rate x duration says
    k: int = 20
    timeout_s: float = 2.0  # a request not answered by then counts as DEADLINE_EXCEEDED
    channels: int = 16  # separate HTTP/2 connections, so SO_REUSEPORT spreads them over server processes
    # "connections": `channels` connections to one address (the shared port: the kernel spreads the
    # connections over the processes); "requests": request i goes to address i mod n of a list (every
    # process's own port, serving.process_ports)
    balance: str = "connections"
    arrivals: str = "uniform"  # or "poisson"
    saturated_p99_ms: float = 1000.0  # stop the sweep after a rate whose p99 exceeds this
    max_error_share: float = 0.05  # ... or whose share of failed requests exceeds this
    slo_p99_ms: float = 50.0
    pin_cpu: int | None = None
    seed: int = 0


@dataclass
class RateResult:
    offered_rps: float
    sent: int
    ok: int
    errors: dict[str, int]
    achieved_rps: float
    latency_ms: dict[str, float]  # p50 / p90 / p99 / p99.9 / mean over every request, failed ones included
    send_lag_ms: dict[str, float]  # how late the generator sent, p50 / p99 / max
    stage_ms: dict[str, dict[str, float]]  # stage -> mean / p50 / p99, server-reported
    server_total_ms: dict[str, float]  # sum of stages per request: mean / p50 / p99
    outside_server_ms: float  # mean latency minus mean server time: transport, queueing, (de)serialisation
    generator_cpu: float  # cores the generator used on average
    generator_gc_max_ms: float  # the generator's longest pause for its cyclic garbage collector
    server_cpu: float  # cores the service (all its processes) used on average


def _schedule(count: int, rate: float, arrivals: str, rng: np.random.Generator) -> np.ndarray:
    """Send offsets in seconds from the start: evenly spaced, or a Poisson process of the same rate."""
    if arrivals == "uniform":
        return np.arange(count) / rate
    if arrivals == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, size=count)) - 1.0 / rate
    raise ValueError(f"arrivals: must be uniform or poisson, got {arrivals!r}")


async def _drive(
    stubs: list[pb_grpc.RecommenderStub],
    requests: list[pb.RecommendRequest],
    offsets: np.ndarray,
    timeout_s: float,
    on_sent: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, float]]]:
    """Send request i at start + offsets[i] without waiting for earlier answers -> (latency s from the
    scheduled time, send lag s, status code names, server stage_ms of each answered request)."""
    loop = asyncio.get_running_loop()
    count = len(requests)
    latency = np.zeros(count)
    lag = np.zeros(count)
    codes = ["" for _ in range(count)]
    stages: list[dict[str, float]] = [{} for _ in range(count)]
    start = loop.time() + 0.05

    async def one(i: int, scheduled: float) -> None:
        lag[i] = loop.time() - scheduled
        try:
            reply = await stubs[i % len(stubs)].Recommend(requests[i], timeout=timeout_s)
            codes[i] = "OK"
            stages[i] = dict(reply.stage_ms)
        except grpc.aio.AioRpcError as exc:
            codes[i] = exc.code().name
        latency[i] = loop.time() - scheduled

    tasks = []
    for i in range(count):
        scheduled = start + offsets[i]
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
        if on_sent is not None and i % 50 == 49:
            on_sent(50)
    await asyncio.gather(*tasks)
    return latency, lag, codes, stages


class _CpuMeter:
    """CPU time this process and a server process tree used between ``start`` and ``stop``, in cores."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid

    def _server_seconds(self) -> float:
        if self.server_pid is None:
            return float("nan")
        try:
            root = psutil.Process(self.server_pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.Error:
            return float("nan")

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._server = self._server_seconds()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self._wall
        return (time.process_time() - self._own) / wall, (self._server_seconds() - self._server) / wall


def _open_channels(target: str | list[str], settings: LoadSettings) -> list[grpc.aio.Channel]:
    """The generator's channels; ``_drive`` sends request i on channel i mod n."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # one real connection per channel
    if settings.balance == "connections":
        if not isinstance(target, str):
            raise ValueError("target: balancing connections needs one HOST:PORT, not a list")
        return [grpc.aio.insecure_channel(target, options=options) for _ in range(settings.channels)]
    if settings.balance == "requests":
        # one channel per process address, so request i goes to process i mod n: what gRPC's round_robin
        # policy does, but deterministic from the first request (round_robin's channel reports ready as
        # soon as one of its connections is)
        addresses = [target] if isinstance(target, str) else target
        return [grpc.aio.insecure_channel(address, options=options) for address in addresses]
    raise ValueError(f"balance: must be connections or requests, got {settings.balance!r}")


def _run_punctually(coroutine):
    """Run ``coroutine`` on an event loop whose timers fire within tens of microseconds.

    asyncio's default loop on Linux waits in epoll, whose timeout is whole milliseconds rounded up, so a
    request due sooner leaves up to a millisecond late, and latency, which runs from the scheduled time,
    charges that to the server. select() takes microseconds (the send lag this bought is in
    benchmarks/README.md); the generator holds a few dozen descriptors, far below select()'s limit."""
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _CollectorWindow:
    """Keep the generator's own garbage collector from stalling its schedule, and time what it still does.

    This process imported the whole project to build the scenario (torch, pandas, faiss: hundreds of
    thousands of tracked objects), and a full collection of them stalls the schedule for a long time (the
    figures are in benchmarks/README.md). Requests created during a run push the collector into one every
    few thousand requests, and every request due meanwhile is charged that pause as server latency.
    Objects alive before the run are frozen (still freed by reference counting, just not traversed); the
    collector keeps running over what the run creates."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._began: float | None = None

    def _observe(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.longest_s = max(self.longest_s, time.perf_counter() - self._began)
            self._began = None

    def __enter__(self) -> _CollectorWindow:
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc_info) -> None:
        gc.callbacks.remove(self._observe)
        gc.unfreeze()


def run_rate(
    target: str | list[str],
    requests: list[pb.RecommendRequest],
    rate: float,
    settings: LoadSettings,
    server_pid: int | None,
    rng: np.random.Generator,
    on_sent: Callable[[int], None] | None = None,
) -> RateResult:
    """One offered rate: send ``requests`` on the schedule and summarise what came back. ``target``: one
    HOST:PORT, or with ``settings.balance = "requests"`` the addresses to rotate over."""
    offsets = _schedule(len(requests), rate, settings.arrivals, rng)

    async def main() -> tuple:
        channels = _open_channels(target, settings)
        try:
            stubs = [pb_grpc.RecommenderStub(c) for c in channels]
            await asyncio.gather(*(c.channel_ready() for c in channels))
            meter = _CpuMeter(server_pid)
            meter.start()
            began = time.perf_counter()
            out = await _drive(stubs, requests, offsets, settings.timeout_s, on_sent)
            elapsed = time.perf_counter() - began
            return (*out, elapsed, *meter.stop())
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    with _CollectorWindow() as collector:
        latency, lag, codes, stages, elapsed, generator_cpu, server_cpu = _run_punctually(main())
    ok = np.array([c == "OK" for c in codes])
    answered = [s for s, good in zip(stages, ok) if good]
    stage_ms = {stage: percentiles([s.get(stage, 0.0) for s in answered]) for stage in STAGES}
    server_total_ms = percentiles([sum(s.values()) for s in answered])
    ok_latency_mean = float((latency[ok] * 1e3).mean()) if ok.any() else float("nan")
    return RateResult(
        offered_rps=float(rate),
        sent=len(requests),
        ok=int(ok.sum()),
        errors=dict(Counter(c for c in codes if c != "OK")),
        achieved_rps=float(ok.sum() / elapsed),
        latency_ms=percentiles(latency * 1e3, PERCENTILES),
        send_lag_ms={
            "p50": float(np.percentile(lag, 50) * 1e3),
            "p99": float(np.percentile(lag, 99) * 1e3),
            "max": float(lag.max() * 1e3),
        },
        stage_ms=stage_ms,
        server_total_ms=server_total_ms,
        outside_server_ms=ok_latency_mean - server_total_ms["mean"],
        generator_cpu=generator_cpu,
        generator_gc_max_ms=collector.longest_s * 1e3,
        server_cpu=server_cpu,
    )


def make_requests(user_ids: np.ndarray, count: int, k: int, rng: np.random.Generator) -> list:
    """``count`` Recommend requests for users drawn uniformly (with replacement) from ``user_ids``."""
    picked = rng.choice(user_ids, size=count)
    return [pb.RecommendRequest(user_id=str(u), k=k) for u in picked]


def sweep(
    target: str | list[str],
    user_ids: np.ndarray,
    settings: LoadSettings,
    server_pid: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[RateResult]:
    """Warm up, then each offered rate in ``settings.rates`` (ascending) until the service saturates."""
    rng = np.random.default_rng(settings.seed)
    lowest = min(settings.rates)
    if settings.warmup_s > 0:
        count = max(1, int(lowest * settings.warmup_s))
        run_rate(target, make_requests(user_ids, count, settings.k, rng), lowest, settings, server_pid, rng)
    results = []
    for rate in sorted(settings.rates):
        count = max(1, min(settings.max_requests, round(rate * settings.duration_s)))
        requests = make_requests(user_ids, count, settings.k, rng)
        with _progress_bar(f"{rate:g} req/s", count) as advance:
            result = run_rate(target, requests, rate, settings, server_pid, rng, advance)
        results.append(result)
        if progress is not None:
            progress(
                f"{rate:g} req/s: p50 {result.latency_ms['p50']:.2f} ms, p99 {result.latency_ms['p99']:.2f} "
                f"ms, achieved {result.achieved_rps:.1f} req/s, errors {result.errors or 0}"
            )
        failed = 1.0 - result.ok / result.sent
        if result.latency_ms["p99"] > settings.saturated_p99_ms or failed > settings.max_error_share:
            if progress is not None:
                progress(f"saturated at {rate:g} req/s; higher rates skipped")
            break
    return results


@contextlib.contextmanager
def _progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="req", leave=False, file=sys.stderr) as bar:
        yield bar.update


@contextlib.contextmanager
def running_service(
    config: AppConfig, log_path: Path, start_timeout_s: float = 1800.0
) -> Iterator[tuple[str, int]]:
    """`cascade serve` in a child process with ``config`` (port must be fixed); yields (target, pid) once
    health says SERVING (on every process's own port, with ``serving.process_ports``), and stops it
    (SIGTERM, then SIGKILL) on exit."""
    if config.serving.port == 0:
        raise ValueError("serving.port: the benchmarked service needs a fixed port")
    target = f"{config.serving.host}:{config.serving.port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "w") as log:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(config.child_json())  # a private temporary folder: the key may be in it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cli = [sys.executable, "-m", "cascade.cli", "--config", str(config_path)]
        subprocess.run(
            [*cli, "features", "load", "--if-changed"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
        )
        proc = subprocess.Popen(
            [*cli, "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C on the harness must not kill the service mid-report
        )
        try:

            def still_running() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the service exited with {proc.returncode}; see {log_path}")

            # the shared port answers from whichever process a connection lands on; with process_ports
            # every process is asked, so no request of the sweep meets one still loading
            for address in config.serving.process_addresses() or [target]:
                with CascadeClient(address, timeout_s=2.0) as client:
                    client.wait_until_serving(start_timeout_s, check=still_running, poll_s=0.5)
            yield target, proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def scenario_config(name_or_path: str) -> Path:
    """A scenario name (benchmarks/scenarios/<name>.toml) or a TOML path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    candidate = SCENARIOS_DIR / f"{name_or_path}.toml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml")))
        raise FileNotFoundError(f"scenario: no {name_or_path!r} (known: {known}, or a .toml path)")
    return candidate


def summarise(rates: list[dict], slo_p99_ms: float) -> dict:
    """The two sizing numbers from a sweep (``rates``: RateResult dicts, ascending): p99 at 100 req/s, and
    the highest offered rate at which p99 stays within the SLO with no errors, at it and at every lower
    rate (a rate that passes after one that failed is luck, not capacity)."""
    at_100 = next((r for r in rates if r["offered_rps"] == 100), None)
    sustained = None
    for r in rates:
        if r["latency_ms"]["p99"] > slo_p99_ms or r["errors"]:
            break
        sustained = r["offered_rps"]
    return {
        "p99_ms_at_100_rps": at_100["latency_ms"]["p99"] if at_100 else None,
        "max_rps_with_p99_within_slo": sustained,
        "rates_within_slo": [
            r["offered_rps"] for r in rates if r["latency_ms"]["p99"] <= slo_p99_ms and not r["errors"]
        ],
        "slo_p99_ms": slo_p99_ms,
    }


def build_report(results: list[RateResult], settings: LoadSettings, context: dict) -> dict:
    return {
        "benchmark": "serve",
        "settings": asdict(settings) | {"rates": list(settings.rates)},
        "context": context | {"generator_pinned_cpu": settings.pin_cpu, "cpus": os.cpu_count()},
        "summary": summarise([asdict(r) for r in results], settings.slo_p99_ms),
        "rates": [asdict(r) for r in results],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = report["rates"]
    offered = [r["offered_rps"] for r in rates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name in ("p50", "p90", "p99", "p99.9"):
        left.plot(offered, [r["latency_ms"][name] for r in rates], marker="o", label=name)
    left.axhline(10, color="grey", linestyle=":", label="10 ms")
    left.axhline(report["summary"]["slo_p99_ms"], color="grey", linestyle="--", label="50 ms")
    left.set_yscale("log")
    left.set_xlabel("offered load (requests/s)")
    left.set_ylabel("latency from scheduled send (ms)")
    left.set_title("latency against offered load (open loop)")
    left.legend()
    left.grid(True, which="both", alpha=0.3)

    bottom = np.zeros(len(rates))
    positions = np.arange(len(rates))
    for stage in STAGES:
        values = np.array([r["stage_ms"][stage]["mean"] for r in rates])
        right.bar(positions, values, bottom=bottom, label=stage)
        bottom += values
    outside = np.array([max(r["outside_server_ms"], 0.0) for r in rates])
    right.bar(
        positions, outside, bottom=bottom, label="outside handler (queue, transport)", color="lightgrey"
    )
    right.set_xticks(positions, [f"{o:g}" for o in offered])
    right.set_xlabel("offered load (requests/s)")
    right.set_ylabel("mean ms per request")
    right.set_title("where the time goes")
    right.legend(fontsize=8)
    fig.suptitle(report["context"].get("title", "cascade bench serve"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    ctx, summary = report["context"], report["summary"]
    lines = [
        f"# {ctx.get('title', 'cascade bench serve')}",
        "",
        f"Scenario `{ctx.get('scenario')}`; server: {ctx.get('server')}; generator: open loop, "
        f"{report['settings']['arrivals']} arrivals, {_balance_text(report['settings'])}, "
        f"pinned to CPU {ctx['generator_pinned_cpu']}; {ctx['cpus']} CPUs.",
        "",
        f"- p99 at 100 req/s: {_fmt(summary['p99_ms_at_100_rps'])} ms",
        f"- highest offered rate with p99 <= {summary['slo_p99_ms']:g} ms and no errors, there and at every "
        f"lower rate: {_fmt(summary['max_rps_with_p99_within_slo'])} req/s (rates within it: "
        f"{', '.join(f'{r:g}' for r in summary['rates_within_slo']) or 'none'})",
        "",
        "| offered | achieved | p50 | p90 | p99 | p99.9 | errors | server ms (mean) | outside ms | "
        "gen CPU | server CPU | gen sent late, max ms | gen GC pause, max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rates"]:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['offered_rps']:g} | {r['achieved_rps']:.1f} | {lat['p50']:.2f} | {lat['p90']:.2f} | "
            f"{lat['p99']:.2f} | {lat['p99.9']:.2f} | {sum(r['errors'].values())} | "
            f"{r['server_total_ms']['mean']:.2f} | {r['outside_server_ms']:.2f} | {r['generator_cpu']:.2f} | "
            f"{r['server_cpu']:.2f} | {r['send_lag_ms']['max']:.2f} | {r['generator_gc_max_ms']:.2f} |"
        )
    lines += ["", "Mean server-side ms per stage:", ""]
    lines.append("| offered | " + " | ".join(STAGES) + " |")
    lines.append("|---" * (len(STAGES) + 1) + "|")
    for r in report["rates"]:
        lines.append(
            f"| {r['offered_rps']:g} | "
            + " | ".join(f"{r['stage_ms'][s]['mean']:.2f}" for s in STAGES)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _balance_text(settings: dict) -> str:
    if settings.get("balance", "connections") == "requests":
        return "requests rotated over the server processes' own ports"
    return f"{settings['channels']} connections to the shared port"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return report_io.write_outputs(report, json_path, plot, markdown)


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process (the generator) to one CPU, so the service's share is predictable."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# Sizes of the synthetic data sets the scenarios name; generated on first use (seeded). Every user has at
# least 50 interactions, so every served history is full (history_length = 50).
SYNTHETIC_SIZES = {
    "synthetic-bench-1m": {
        "num_users": 100_000,
        "num_items": 1_000_000,
        "num_interactions": 5_000_000,
        "min_interactions": 50,
    },
    # the ends of the scale table (benchmarks/README.md): 1M users each, all of them in the feature store
    # and drawn from by the requests
    "synthetic-bench-100k": {
        "num_users": 1_000_000,
        "num_items": 100_000,
        "num_interactions": 20_000_000,
        "min_interactions": 20,
    },
    "synthetic-bench-10m": {
        "num_users": 1_000_000,
        "num_items": 10_000_000,
        "num_interactions": 20_000_000,
        "min_interactions": 20,
    },
}


def run(
    config: AppConfig,
    settings: LoadSettings,
    scenario: str,
    target: str | None,
    json_path: Path,
    progress: Callable[[str], None],
) -> dict:
    """`cascade bench serve`: the sweep against ``target`` (a service already running the scenario; with
    ``balance`` requests, a comma-separated list of its processes' own addresses), or against the
    scenario's service started in a child process (built first if need be, its log beside
    ``json_path``); returns the report."""
    serving = config.serving
    context = {
        "scenario": scenario,
        "title": f"cascade bench serve: {config.data.dataset}, ranker {config.ranking.type}",
        "server": f"{serving.processes} process(es) x {serving.workers} RPC threads, "
        f"ranker precision {serving.ranker_precision}" + (f", external {target}" if target else ""),
        "ranker": config.ranking.type,
        "num_candidates": config.recall.num_candidates + config.recall.cooccurrence_candidates,
        "history_length": config.features.history_length,
    }
    if target is None:
        prepare_scenario(config, progress)
    user_ids = scenario_user_ids(config)
    pin_to_cpu(settings.pin_cpu)

    def drive(address: str, pid: int | None) -> list[RateResult]:
        if settings.balance != "requests":
            return sweep(address, user_ids, settings, pid, progress)
        addresses = address.split(",") if target is not None else serving.process_addresses()
        if not addresses:
            raise RuntimeError("--balance requests needs serving.process_ports in the scenario")
        progress(f"balancing requests over {', '.join(addresses)}")
        return sweep(addresses, user_ids, settings, pid, progress)

    if target is not None:
        results = drive(target, None)
    else:
        log = json_path.with_suffix(".server.log")
        progress(f"starting the service ({context['server']}); its log: {log}")
        with running_service(config, log) as (address, pid):
            progress(f"service SERVING on {address}")
            results = drive(address, pid)
    return build_report(results, settings, context)


def prepare_scenario_data(config: AppConfig, progress: Callable[[str], None]) -> None:
    """The scenario's data set: generated (synthetic) or fetched (MovieLens-100K) when not yet prepared."""
    from cascade.data import fetch
    from cascade.data.synthetic import generate

    path = config.data.path
    name = config.data.dataset
    if not (path / "dataset.json").exists():
        if name in SYNTHETIC_SIZES:
            progress(f"generating {name}")
            generate(**SYNTHETIC_SIZES[name], seed=config.seed, name=name).save(path)
        elif name == "movielens-100k":
            progress("fetching movielens-100k")
            fetch.fetch(name, config.data.data_dir)
        else:
            raise FileNotFoundError(f"data.dataset: {name} is not prepared under {config.data.data_dir}")


def prepare_scenario(config: AppConfig, progress: Callable[[str], None]) -> None:
    """Everything the scenario serves: its data set, recall model, index and ranker. Each step is reused
    when already built from the same config and data (the artifact fingerprints)."""
    from cascade.training.index import rebuild_index
    from cascade.training.ranking import train_ranking
    from cascade.training.recall import train_recall

    prepare_scenario_data(config, progress)
    progress("recall model (reused when up to date)")
    train_recall(config, progress=False)
    progress("index (reused when up to date)")
    rebuild_index(config, if_stale=True)
    progress("ranker (reused when up to date)")
    train_ranking(config, progress=False)


def scenario_user_ids(config: AppConfig) -> np.ndarray:
    """Every user of the scenario's data set with a history: the population requests are drawn from."""
    import pandas as pd

    interactions = pd.read_parquet(config.data.path / "interactions.parquet", columns=["user_id"])
    return np.unique(interactions["user_id"].to_numpy())
