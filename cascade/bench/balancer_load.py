"""`cascade bench balancer`: serving replicas (`cascade serve` processes) behind HAProxy with the shipped
configuration, sharing one Redis, under closed-loop load: how calls spread, what the extra hop costs
against calling one replica directly, and what callers see while one replica is drained (SIGTERM) and
another killed (SIGKILL).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from cascade.bench.balancer import HAProxyBalancer, recommends_answered
from cascade.bench.ports import free_port
from cascade.bench.redis_process import RedisProcess
from cascade.bench.report import percentiles
from cascade.bench.report import write_outputs as write_report_files
from cascade.config import AppConfig
from cascade.serving.client import CascadeClient


@dataclass(frozen=True)
class BalancerSettings:
    replicas: int = 3
    callers: int = 4
    phase_s: float = 6.0
    drain_s: float = 2.0  # serving.drain_s of each replica
    users: int = 900


def run(config: AppConfig, settings: BalancerSettings, work_dir: Path, progress=lambda message: None) -> dict:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    ports = [(free_port(), free_port()) for _ in range(settings.replicas)]
    processes: list[subprocess.Popen] = []
    with RedisProcess(work_dir / "redis", fsync="everysec") as redis_process:
        paths = []
        for i, (grpc_port, metrics_port) in enumerate(ports):
            serving = config.serving.model_copy(
                update={"port": grpc_port, "metrics_port": metrics_port, "redis_url": redis_process.url,
                        "drain_s": settings.drain_s, "reload_interval_s": 0.0, "host": "127.0.0.1"}
            )  # fmt: skip
            path = work_dir / f"replica-{i}.json"
            path.write_text(config.model_copy(update={"serving": serving}).child_json())
            paths.append(path)
        progress("loading features")
        _cli(paths[0], "features", "load")
        try:
            progress(f"starting {settings.replicas} replicas")
            for i, path in enumerate(paths):
                with open(work_dir / f"replica-{i}.log", "w") as log:
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "cascade.cli", "--config", str(path), "serve"],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            for (grpc_port, _), process in zip(ports, processes):
                with CascadeClient(f"127.0.0.1:{grpc_port}", timeout_s=2) as client:
                    client.wait_until_serving(300, check=lambda p=process: _alive(p))
            with HAProxyBalancer(work_dir / "haproxy", ports) as balancer:
                names = [f"replica-{i}" for i in range(settings.replicas)]
                balancer.wait_for(dict.fromkeys(names, "UP"), timeout_s=30)
                progress("direct to one replica, then through the balancer")
                direct = _closed_loop(f"127.0.0.1:{ports[0][0]}", settings, settings.phase_s)
                before = [recommends_answered(metrics_port) for _, metrics_port in ports]
                balanced = _closed_loop(balancer.target, settings, settings.phase_s)
                spread = [
                    recommends_answered(metrics_port) - b for (_, metrics_port), b in zip(ports, before)
                ]
                progress("drain one replica (SIGTERM), kill another (SIGKILL) under load")
                faults = _faults(balancer, processes, settings)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return {
        "benchmark": "balancer",
        "settings": asdict(settings),
        "direct": direct["summary"],
        "balanced": balanced["summary"],
        "spread": spread,
        "faults": faults,
    }


def _cli(path: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cascade.cli", "--config", str(path), *args], check=True,
                   capture_output=True, timeout=600)  # fmt: skip


def _alive(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"a replica exited with {process.returncode}")


def _closed_loop(target: str, settings: BalancerSettings, seconds: float, events: bool = False,
                 stop: threading.Event | None = None) -> dict:  # fmt: skip
    """``settings.callers`` callers, each one Recommend (and one RecordEvent) after another, for ``seconds``
    or until ``stop``: latencies and codes, with when each call ended."""
    stop = stop or threading.Event()
    calls: list[tuple[float, float, str]] = []  # (ended at, seconds, code)
    lock = threading.Lock()

    def caller(worker: int) -> None:
        n = 0
        with CascadeClient(target, timeout_s=10) as client:
            while not stop.is_set():
                user = 1 + (worker * 7919 + n) % settings.users
                started = time.perf_counter()
                try:
                    client.recommend(user, k=10)
                    if events:
                        client.record_event(user, 1 + n % 1500, "view", event_id=f"bench-{worker}-{n}")
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                ended = time.perf_counter()
                with lock:
                    calls.append((ended, ended - started, code))
                n += 1

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(settings.callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    if not stop.wait(seconds):
        stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok = [seconds * 1e3 for _, seconds, code in calls if code == "OK"]
    return {
        "calls": calls,
        "started": started,
        "summary": {
            "calls_per_s": round(len(calls) / elapsed, 1),
            "codes": dict(Counter(code for _, _, code in calls)),
            **{k: round(v, 2) for k, v in percentiles(ok, (50.0, 99.0), suffix="_ms").items()},
        },
    }


def _faults(balancer: HAProxyBalancer, processes: list[subprocess.Popen], settings: BalancerSettings) -> dict:
    stop = threading.Event()
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(_closed_loop(balancer.target, settings, 1e9, True, stop))
    )
    load.start()
    try:
        time.sleep(1.5)
        t0 = time.perf_counter()
        processes[0].send_signal(signal.SIGTERM)
        drained_out_s = balancer.wait_for({"replica-0": "DOWN"}, timeout_s=10)
        processes[0].wait(timeout=60)
        drain_exit_s = time.perf_counter() - t0
        time.sleep(1.0)
        t1 = time.perf_counter()
        processes[1].send_signal(signal.SIGKILL)
        killed_out_s = balancer.wait_for({"replica-1": "DOWN"}, timeout_s=10)
        time.sleep(1.5)
    finally:
        stop.set()
        load.join()
    calls = result["calls"]
    during_drain = [c for c in calls if t0 <= c[0] <= t0 + drain_exit_s]
    during_kill = [c for c in calls if t1 <= c[0] <= t1 + killed_out_s + 1.0]
    return {
        "drain": {
            "out_of_the_balancer_s": round(drained_out_s, 3),
            "replica_exited_s": round(drain_exit_s, 3),
            "codes": dict(Counter(code for _, _, code in during_drain)),
        },
        "kill": {
            "out_of_the_balancer_s": round(killed_out_s, 3),
            "codes": dict(Counter(code for _, _, code in during_kill)),
            **{
                k: round(v, 2)
                for k, v in percentiles(
                    [s * 1e3 for _, s, code in during_kill if code == "OK"], (50.0, 99.0), suffix="_ms"
                ).items()
            },
        },
        "codes": dict(Counter(code for _, _, code in calls)),
        "timeline": _timeline(
            calls, result["started"], [(t0, "SIGTERM replica-0"), (t1, "SIGKILL replica-1")]
        ),
    }


def _timeline(calls: list[tuple[float, float, str]], started: float, marks: list[tuple[float, str]]) -> dict:
    ends = np.array([c[0] - started for c in calls])
    failed = np.array([c[0] - started for c in calls if c[2] != "OK"])
    edges = np.arange(0.0, float(ends.max(initial=0.0)) + 0.25, 0.25)
    return {
        "bucket_s": 0.25,
        "ok": np.histogram(ends, edges)[0].tolist(),
        "failed": np.histogram(failed, edges)[0].tolist() if len(failed) else [0] * (len(edges) - 1),
        "marks": [(round(at - started, 3), label) for at, label in marks],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = report["faults"]["timeline"]
    x = np.arange(len(line["ok"])) * line["bucket_s"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(x, np.array(line["ok"]) / line["bucket_s"], label="calls answered/s")
    ax.plot(x, np.array(line["failed"]) / line["bucket_s"], label="calls failed/s")
    for at, label in line["marks"]:
        ax.axvline(at, color="red", linestyle="--")
        ax.text(at, ax.get_ylim()[1] * 0.9, f" {label}", fontsize=7, color="red")
    ax.set_xlabel("seconds")
    ax.set_title(f"{report['settings']['replicas']} replicas behind HAProxy: drain and kill under load")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    s, f = report["settings"], report["faults"]
    rows = [("one replica, direct", report["direct"]), ("through HAProxy", report["balanced"])]
    drain, kill = f["drain"], f["kill"]
    lines = [
        "# Replicas behind HAProxy (`cascade bench balancer`)",
        "",
        f"{s['replicas']} `cascade serve` replicas sharing one Redis, {s['callers']} closed-loop callers, "
        f"{s['phase_s']:g} s a phase.",
        "",
        "| path | calls/s | p50 | p99 | codes |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {name} | {r['calls_per_s']} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['codes']} |"
            for name, r in rows
        ),
        "",
        f"Recommends per replica through HAProxy: {report['spread']}.",
        "",
        f"- SIGTERM (drain): out of the balancer after {drain['out_of_the_balancer_s']} s, exited after "
        f"{drain['replica_exited_s']} s; calls meanwhile {drain['codes']}.",
        f"- SIGKILL: out of the balancer after {kill['out_of_the_balancer_s']} s; calls from the kill to 1 s "
        f"after {kill['codes']} (p99 {kill['p99_ms']} ms).",
        f"- Every call of the fault phase: {f['codes']}.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(report: dict, json_path: Path) -> dict[str, Path]:
    return write_report_files(json.loads(json.dumps(report)), json_path, plot, summary)
