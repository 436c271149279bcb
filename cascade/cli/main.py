"""The ``cascade`` command line. Stage code is imported inside each command, so ``--help`` is instant.

Exit codes: 0 success; 1 the command failed (the reason on stderr, one line); 2 bad usage (an unknown
option, a missing argument); 130 interrupted. Logs go to stderr; ``--json`` output to stdout is JSON only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cascade.config import AppConfig, load_config

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Cascade: recall-and-rank recommendations."
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare datasets.")
train_app = typer.Typer(no_args_is_help=True, help="Train models.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate on the temporal split.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: JSON + PNG + markdown summary.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
features_app = typer.Typer(no_args_is_help=True, help="The online feature store (Redis).")
config_app = typer.Typer(no_args_is_help=True, help="The configuration.")
app.add_typer(bench_app, name="bench")
app.add_typer(features_app, name="features")
app.add_typer(config_app, name="config")
catalogue_app = typer.Typer(no_args_is_help=True, help="Change the served catalogue between trainings.")
app.add_typer(catalogue_app, name="catalogue")
segments_app = typer.Typer(no_args_is_help=True, help="Customer value: tiers and segments.")
app.add_typer(segments_app, name="segments")

console = Console()
error_console = Console(stderr=True)
logger = logging.getLogger("cascade")
_state: dict[str, AppConfig] = {}

BULK_TIMEOUT_S = 300.0  # a Redis call of a bulk load (pipelines of hundreds of users) may take this long

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $CASCADE_CONFIG or ./cascade.toml)."),
]


@app.callback()
def main(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="Log lines as text or json; auto: json unless stderr is a terminal.")
    ] = "auto",
    dataset: Annotated[
        str | None,
        typer.Option(help="Prepared dataset to use (a folder under data.data_dir), over data.dataset."),
    ] = None,
) -> None:
    from cascade.core.logs import configure_logging

    if log_format not in ("auto", "json", "text"):
        raise typer.BadParameter("must be auto, json or text", param_hint="--log-format")
    configure_logging(log_level.upper(), log_format)  # type: ignore[arg-type]
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs its CPU-feature probing at INFO
    try:
        cfg = load_config(config)
    except (OSError, ValueError) as exc:
        _fail(f"config: {exc}")
    if dataset is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})
    _state["config"] = cfg
    logger.debug("resolved config:\n%s", cfg.resolved_json())


def _config() -> AppConfig:
    return _state["config"]


def _fail(message: str) -> None:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _run(fn, *args, **kwargs):
    from cascade.core.errors import CascadeError

    try:
        return fn(*args, **kwargs)
    except (CascadeError, RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("fetch")
def data_fetch(
    name: Annotated[
        str, typer.Argument(help="Dataset to prepare: movielens-100k, cdnow, or a GroupLens one.")
    ],
    source: Annotated[
        Path | None, typer.Option("--from", help="Official GroupLens zip or folder, or CDNOW's master file.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Prepare again even if already there.")] = False,
) -> None:
    """Prepare a data set under data_dir: MovieLens (ML-100K needs no GroupLens access), or CDNOW's
    purchases for customer value (from the lifetimes wheel on PyPI; the package is never installed)."""
    from cascade.data.fetch import fetch

    path = _run(fetch, name, _config().data.data_dir, source, force)
    console.print(f"dataset ready at [bold]{path}[/]")
    if name != "cdnow" and _config().data.dataset != path.name:
        console.print(
            f"the config uses {_config().data.dataset!r}: pass [bold]--dataset {path.name}[/] to other "
            f'commands, or set data.dataset = "{path.name}" (or CASCADE_DATA__DATASET={path.name})'
        )


@data_app.command("synth")
def data_synth(
    name: Annotated[str, typer.Option(help="Folder name under data_dir.")] = "synthetic",
    users: Annotated[int, typer.Option(help="Number of users.")] = 10_000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 20_000,
    interactions: Annotated[int, typer.Option(help="Approximate number of interactions.")] = 500_000,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the config's).")] = None,
    min_interactions: Annotated[int, typer.Option(help="Fewest interactions of any user.")] = 5,
    string_ids: Annotated[
        bool, typer.Option(help="Opaque string ids: UUIDs for users, SKU-like codes for items.")
    ] = False,
    commerce: Annotated[
        bool,
        typer.Option(
            help="Also the users' purchases and sessions, driven by a latent customer value, as the purchase "
            "log NAME-commerce (cascade evaluate value --dataset NAME-commerce)."
        ),
    ] = False,
) -> None:
    """Generate a seeded synthetic MovieLens-shaped dataset."""
    from cascade.data.synthetic import generate
    from cascade.data.synthetic_commerce import generate_commerce

    cfg = _config()
    dataset = generate(
        users,
        items,
        interactions,
        seed=cfg.seed if seed is None else seed,
        name=name,
        min_interactions=min_interactions,
        string_ids=string_ids,
    )
    path = dataset.save(Path(cfg.data.data_dir) / name)
    console.print(f"synthetic dataset ({len(dataset.interactions)} interactions) at [bold]{path}[/]")
    if commerce:
        log = generate_commerce(dataset, seed=cfg.seed if seed is None else seed)
        path = log.save(Path(cfg.data.data_dir) / log.name)
        sessions = 0 if log.sessions is None else len(log.sessions)
        console.print(f"purchase log ({len(log.table)} purchases, {sessions} sessions) at [bold]{path}[/]")


EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="Where the jobs that grow with the data run: local (this process) or ray (offline.engine).",
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster to run them on (auto, ray://head:10001); unset: a local Ray (offline.ray_address).",
    ),
]


def _offline(engine: str | None, ray_address: str | None) -> None:
    """The command's --engine and --ray-address over the config's [offline]."""
    cfg = _config()
    update: dict = {}
    if engine is not None:
        if engine not in ("local", "ray"):
            raise typer.BadParameter("must be local or ray", param_hint="--engine")
        update["engine"] = engine
    if ray_address is not None:
        update["ray_address"] = ray_address
        update.setdefault("engine", "ray")
    if update:
        offline = cfg.offline.model_validate(cfg.offline.model_dump() | update)
        _state["config"] = cfg.model_copy(update={"offline": offline})


@train_app.command("recall")
def train_recall(
    force: Annotated[bool, typer.Option(help="Retrain even if up to date.")] = False,
    nproc: Annotated[
        int, typer.Option(help="Training processes, data-parallel (torchrun, gloo); 1 trains in this one.")
    ] = 1,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Train the two-tower model on the training split (reuses the current one if config and data match)."""
    _offline(engine, ray_address)
    from cascade.recall.bundle import RECALL
    from cascade.training.recall import train_recall as run

    ref = _train_data_parallel("recall", RECALL, nproc, force) if nproc > 1 else _run(run, _config(), force)
    console.print(f"recall artifact [bold]{ref.version}[/] metrics: {_fmt(ref.manifest['metrics'])}")


@train_app.command("ranking")
def train_ranking(
    force: Annotated[bool, typer.Option(help="Retrain even if up to date.")] = False,
    nproc: Annotated[
        int,
        typer.Option(
            help="Training processes, data-parallel (torchrun, gloo), for the din and wide_deep rankers; "
            "1 trains in this one."
        ),
    ] = 1,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Train the ranker on labelled recall candidates (reuses the current one if config and data match)."""
    _offline(engine, ray_address)
    from cascade.ranking.bundle import RANKING
    from cascade.training.ranking import train_ranking as run

    ref = _train_data_parallel("ranking", RANKING, nproc, force) if nproc > 1 else _run(run, _config(), force)
    console.print(f"ranking artifact [bold]{ref.version}[/] metrics: {_fmt(ref.manifest['metrics'])}")


@train_app.command("value")
def train_value(
    force: Annotated[bool, typer.Option(help="Retrain even if up to date.")] = False,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Fit the customer-value models served in profiles (the BP 14-29-1 network's K and the k-means
    segments) on the served data set; the feature load applies them to every customer."""
    _offline(engine, ray_address)
    from cascade.training.value import train_value as run

    ref = _run(run, _config(), force)
    console.print(f"value artifact [bold]{ref.version}[/] metrics: {_fmt(ref.manifest['metrics'])}")


@train_app.command("guard")
def train_guard(force: Annotated[bool, typer.Option(help="Retrain even if up to date.")] = False) -> None:
    """Fit the shilling detector RecordEvent scores live profiles with (guard.live_quarantine_score), on the
    served data set less its flagged profiles."""
    from cascade.training.guard import train_guard as run

    ref = _run(run, _config(), force)
    console.print(f"guard artifact [bold]{ref.version}[/] metrics: {_fmt(ref.manifest['metrics'])}")


def _train_data_parallel(command: str, kind: str, nproc: int, force: bool):
    """``command`` trained by ``nproc`` torchrun processes; the artifact the first one published."""
    from cascade.training.distributed import launch

    try:
        status = _run(launch, command, nproc, _config(), force)
    except ValueError as exc:  # an --nproc the config cannot train with
        _fail(str(exc))
    if status != 0:
        _fail(f"distributed training exited with status {status}")
    return _config().artifact_store().require(kind)


@app.command("rebuild-index")
def rebuild_index(
    if_stale: Annotated[
        bool,
        typer.Option(
            help="Only build when the current index is not from the current recall model and config."
        ),
    ] = False,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Embed the catalogue, build and validate the FAISS index, and publish it atomically."""
    _offline(engine, ray_address)
    from cascade.training.index import rebuild_index as run

    ref = _run(run, _config(), if_stale, True)
    console.print(f"index artifact [bold]{ref.version}[/] metrics: {_fmt(ref.manifest['metrics'])}")


@app.command("report")
def report_command(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/report.json"
    ),
    sections: Annotated[
        str, typer.Option(help="Comma-separated sections: recall, ranking, pipeline, rating.")
    ] = "recall,ranking,pipeline,rating",
) -> None:
    """Recall (with every baseline), ranking and pipeline quality, rating RMSEs and the latest latency
    figures, as JSON + PNG + markdown, from the current artifacts."""
    from cascade.bench import quality_report

    chosen = tuple(s.strip() for s in sections.split(",") if s.strip())
    unknown = set(chosen) - set(quality_report.SECTIONS)
    if unknown:
        raise typer.BadParameter(
            f"unknown sections {sorted(unknown)}; choose from {list(quality_report.SECTIONS)}"
        )
    report = _run(quality_report.run, _config(), _progress("report"), chosen)
    _wrote(quality_report.write_outputs(report, json_path))


@app.command("rollback")
def rollback(
    kind: Annotated[str, typer.Argument(help="Artifact kind: recall, index or ranking.")] = "index",
    to: Annotated[str | None, typer.Option(help="Version to go back to (default: the previous one).")] = None,
) -> None:
    """Point an artifact kind's CURRENT back at an earlier version (a running server picks it up)."""
    from cascade.serving.models import SERVED_KINDS
    from cascade.training.rollback import rollback as run

    if kind not in SERVED_KINDS:
        _fail(f"kind must be one of {', '.join(SERVED_KINDS)}, got {kind!r}")
    ref = _run(run, _config(), kind, to)
    console.print(f"{kind} CURRENT is now [bold]{ref.version}[/]")


@app.command("serve")
def serve() -> None:
    """Start the gRPC service in the foreground (Ctrl-C stops it)."""
    from cascade.serving.app import serve_forever

    cfg = _config()

    def ready(port: int) -> None:
        console.print(
            f"[bold green]Cascade is serving on {cfg.serving.host}:{port}[/]\n"
            f"  query it:  cascade recommend --user-id 42 --target {cfg.serving.host}:{port}\n"
            "  stop it:   Ctrl-C"
        )

    _run(serve_forever, cfg, ready)


@features_app.command("load")
def features_load(
    if_changed: Annotated[
        bool, typer.Option(help="Do nothing when this data set and history length are loaded already.")
    ] = False,
) -> None:
    """Merge the configured data set's users into the feature store: profiles, histories (with the events
    recorded online, never deleting one) and seen sets. Safe to run while serving and from several places
    at once (one loads, the others wait)."""
    from cascade.serving.app import load_features, open_feature_store

    cfg = _config()

    def load() -> bool:
        with open_feature_store(cfg, timeout_s=BULK_TIMEOUT_S) as store:
            return load_features(cfg, store, if_changed=if_changed)

    loaded = _run(load)
    console.print("features loaded" if loaded else "features already loaded; nothing to do")


@config_app.command("show")
def config_show() -> None:
    """The resolved config (file, then environment, then defaults) as JSON."""
    print(_config().resolved_json())


@config_app.command("schema")
def config_schema() -> None:
    """The JSON schema of the config: every key with its type, default and description. Every key can
    also be set from the environment: CASCADE_<SECTION>__<KEY>, e.g. CASCADE_SERVING__PORT=50052."""
    print(json.dumps(AppConfig.model_json_schema(), indent=2))


@app.command("health")
def health(
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
    service: Annotated[
        str, typer.Option(help="Health service: '' (the server), cascade.feature_store (readiness).")
    ] = "",
) -> None:
    """Exit 0 when the service says SERVING, 1 otherwise (a container's or a probe's health check)."""
    import grpc

    from cascade.serving.client import CascadeClient

    cfg = _config()
    target = target or f"{cfg.serving.host}:{cfg.serving.port}"
    with CascadeClient.for_config(cfg, target, timeout_s=2.0) as client:
        try:
            status = client.health(service)
        except grpc.RpcError as exc:
            _fail(f"{target}: {exc.code().name}")
    print(status)
    if status != "SERVING":
        raise typer.Exit(code=1)


def _call_service(target: str | None, call: Callable):
    """``call(client)`` against the configured service (``target`` overrides its address; its TLS, and
    CASCADE_API_KEY) -> the reply; an error status exits with one line."""
    import grpc

    from cascade.serving.client import CascadeClient

    with CascadeClient.for_config(_config(), target) as client:
        try:
            return call(client)
        except grpc.RpcError as exc:
            _fail(f"{exc.code().name}: {exc.details()}")


@app.command("profile")
def profile(
    user_id: Annotated[str, typer.Option(help="User id.")],
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask a running service for a customer's profile: demographics, value tier, genres, recent items."""
    from google.protobuf.json_format import MessageToDict

    reply = _call_service(target, lambda client: client.customer_profile(user_id))
    if as_json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        return
    demo = reply.demographics
    console.print(
        f"customer {reply.user_id}: {demo.gender or '?'}, {demo.age or '?'}, {demo.occupation or '?'}"
    )
    if reply.HasField("value"):
        v = reply.value
        moved = f", moved by {v.events_since_load} events since the load" if v.moved_since_load else ""
        console.print(
            f"tier {v.tier}: R {v.recency_score} F {v.frequency_score} M {v.monetary_score}, "
            f"C {v.current_value:.3f} (band {v.value_band}){moved}"
        )
        if v.HasField("value_k"):
            console.print(
                f"value model: K {v.value_k:.3f} (tier {v.k_tier} by K), k-means segment {v.cluster}"
            )
    genres = ", ".join(f"{g.genre} {g.items}" for g in reply.top_genres)
    console.print(f"top genres: {genres or '-'}")
    events = ", ".join(f"{name} {count}" for name, count in sorted(reply.events_by_type.items()))
    console.print(f"history: {reply.history_length} events ({events or '-'})")
    for item in reply.recent_items:
        console.print(f"  {item.item_id}  {item.title}")


keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke (serving.auth).")
app.add_typer(keys_app, name="keys")
guard_app = typer.Typer(
    no_args_is_help=True, help="The abnormal-behaviour guard: fake profiles, flags, quarantine, blocks."
)
app.add_typer(guard_app, name="guard")


@guard_app.command("scan")
def guard_scan() -> None:
    """Flag the coordinated fake profiles of the served data set (shilling: random, average, bandwagon,
    segment attacks). Flagged profiles are left out of every training, evaluation and feature load until
    the next scan; training scans by itself when the data set changed (guard.scan_before_training)."""
    from cascade.training.guard import guard_scan as run

    report = _run(run, _config())
    if report.skipped:
        console.print(f"not scanned: {report.skipped}")
        return
    console.print(f"{len(report.flagged)} of {report.users} profiles flagged ({report.seconds:.1f} s)")
    for entry in report.flagged:
        console.print(f"  {entry['user_id']}: score {entry['score']:.3f}, pushes item {entry['pushed_item']}")


TargetOption = Annotated[str | None, typer.Option(help="HOST:PORT of the service (default: the config's).")]


@guard_app.command("list")
def guard_list(
    limit: Annotated[int, typer.Option(help="At most this many, the latest first.")] = 100,
    target: TargetOption = None,
) -> None:
    """The users the live guard flagged (their events quarantined) or an operator blocked, with why."""
    import time as clock

    reply = _call_service(target, lambda client: client.guard_flags(limit))
    if not reply.flags:
        console.print("no user is flagged or blocked")
    for flag in reply.flags:
        since = clock.strftime("%Y-%m-%d %H:%M:%S", clock.gmtime(flag.since))
        console.print(
            f"{flag.pseudonym}: {flag.state} since {since} UTC by {flag.by} (score {flag.score:.3f}, "
            f"{flag.quarantined_events} events quarantined): {flag.reason}"
        )


@guard_app.command("clear")
def guard_clear(
    user_id: Annotated[str, typer.Argument(help="An id, or a pseudonym from `guard list`.")],
    discard: Annotated[
        bool, typer.Option(help="Drop the quarantined events instead of adding them to the history.")
    ] = False,
    target: TargetOption = None,
) -> None:
    """Lift a user's flag or block: their quarantined events join their history in order (or are dropped)."""
    user = _user_or_pseudonym(user_id)
    reply = _call_service(target, lambda client: client.clear_user(user, discard))
    if not reply.previous_state:
        console.print(f"user {user_id} was neither flagged nor blocked")
        return
    done = "dropped" if discard else "released into the history"
    console.print(
        f"user {user_id} no longer {reply.previous_state}; {reply.events} quarantined events {done}"
    )


@guard_app.command("block")
def guard_block(
    user_id: Annotated[str, typer.Argument(help="The user to block: an id, or a pseudonym.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")],
    target: TargetOption = None,
) -> None:
    """Refuse a user's events (PERMISSION_DENIED) until cleared; audited."""
    user = _user_or_pseudonym(user_id)
    reply = _call_service(target, lambda client: client.block_user(user, reason))
    before = f" (was {reply.previous_state})" if reply.previous_state else ""
    console.print(f"user {user_id} blocked{before}")


def _user_or_pseudonym(text: str) -> str:
    """A pseudonym as `guard list` and the logs print them ("p-" and 32 hex digits) names a user by it."""
    from cascade.core.privacy import PSEUDONYM, Pseudonym

    return Pseudonym(text) if PSEUDONYM.fullmatch(text) else text


privacy_app = typer.Typer(no_args_is_help=True, help="Customers' privacy requests: forget a user.")
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("forget")
def privacy_forget(
    user_id: Annotated[str, typer.Argument(help="The user to forget.")],
    offline: Annotated[
        bool, typer.Option(help="Only deny-list the user here; the service is not called.")
    ] = False,
    target: TargetOption = None,
) -> None:
    """Forget a user: put them on the deny-list beside the configured data set (every later training run,
    evaluation and feature load leaves them out; models fitted with them are fitted again), then have the
    service delete everything it holds of them (PrivacyAdmin.ForgetUser). Prints what was removed."""
    from cascade.data.forgotten import DenyList, deny_list_path

    cfg = _config()
    folder = cfg.data.path
    user = _dataset_user(folder, user_id)
    pseudonyms = cfg.pseudonyms()
    if (folder / "dataset.json").is_file():
        added = DenyList.add(folder, user, pseudonyms)
        listed = "added to" if added else "already on"
        console.print(f"{pseudonyms.of(user)}: {listed} the deny-list {deny_list_path(folder)}")
    else:
        console.print(f"no data set at {folder}: deny-list the user where the data lives too")
    if offline:
        console.print("the service was not called (--offline): its store still holds the user")
        return
    reply = _call_service(target, lambda client: client.forget_user(user_id))
    removed = ", ".join(f"{name} {count}" for name, count in sorted(reply.removed.items()) if count)
    console.print(f"the service removed: {removed or 'nothing (nothing held)'}")
    if reply.deny_listed:
        console.print("the service's data set deny-lists the user too")


def _dataset_user(folder: Path, text: str) -> int | str:
    """``text`` as the data set's user ids are: an integer where they are integers (the service reads
    "042" as 42 then), so that the deny-list and the service name one user."""
    import pyarrow.parquet as pq

    users = folder / "users.parquet"
    numeric = users.is_file() and str(pq.read_schema(users).field("user_id").type).startswith("int")
    return int(text) if numeric and text.strip().isdigit() else text


def _keys_path(path: Path | None) -> Path:
    path = path or _config().serving.auth.api_keys_path
    if path is None:
        _fail("no keys file: pass --file or set serving.auth.api_keys_path")
    return path


@keys_app.command("create")
def keys_create(
    key_id: Annotated[str, typer.Option("--id", help="Names the key in logs, e.g. the calling app.")],
    scopes: Annotated[
        list[str], typer.Option("--scope", help="recommend, record_event or admin (repeatable).")
    ],
    expires_days: Annotated[
        float | None, typer.Option(help="The key stops working after this many days.")
    ] = None,
    path: Annotated[
        Path | None, typer.Option("--file", help="Keys file (default: serving.auth.api_keys_path).")
    ] = None,
) -> None:
    """Make a new key, add its digest to the keys file, and print the key: the only time it is shown."""
    from datetime import datetime, timedelta, timezone

    from pydantic import ValidationError

    from cascade.serving.auth import KeyEntry, key_digest, new_key, read_keys_file, write_keys_file

    path = _keys_path(path)
    entries = _run(read_keys_file, path)
    if any(entry.id == key_id for entry in entries):
        _fail(f"key id {key_id!r} is in {path} already: revoke it first, or pick another id")
    key = new_key()
    expires = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
    try:
        entry = KeyEntry(id=key_id, sha256=key_digest(key), scopes=tuple(scopes), expires=expires)
    except ValidationError as exc:
        problem = exc.errors()[0]
        _fail(f"--{problem['loc'][0]}: {problem['msg']}")
    write_keys_file(path, [*entries, entry])
    console.print(f"key {key_id} ({', '.join(scopes)}) added to {path}; it is shown once, keep it secret:")
    print(key)


@keys_app.command("list")
def keys_list(
    path: Annotated[
        Path | None, typer.Option("--file", help="Keys file (default: serving.auth.api_keys_path).")
    ] = None,
) -> None:
    """The keys in the file: ids, scopes, expiry (never the keys)."""
    from cascade.serving.auth import read_keys_file

    for entry in _run(read_keys_file, _keys_path(path)):
        expires = f", expires {entry.expires.isoformat()}" if entry.expires else ""
        print(f"{entry.id}: {', '.join(entry.scopes)}{expires}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Option("--id", help="The key to remove.")],
    path: Annotated[
        Path | None, typer.Option("--file", help="Keys file (default: serving.auth.api_keys_path).")
    ] = None,
) -> None:
    """Remove a key from the file; servers stop accepting it within serving.auth.reload_interval_s."""
    from cascade.serving.auth import read_keys_file, write_keys_file

    path = _keys_path(path)
    entries = _run(read_keys_file, path)
    kept = [entry for entry in entries if entry.id != key_id]
    if len(kept) == len(entries):
        _fail(f"no key {key_id!r} in {path}")
    write_keys_file(path, kept)
    console.print(f"key {key_id} revoked")


@app.command("record-event")
def record_event(
    user_id: Annotated[str, typer.Option(help="User id.")],
    item_id: Annotated[str, typer.Option(help="Item id.")],
    event_type: Annotated[str, typer.Option("--type", help="view, click, rate or purchase.")] = "view",
    rating: Annotated[float, typer.Option(help="The rating of a rate event (1-5).")] = 0.0,
    event_id: Annotated[str, typer.Option(help="Idempotency key: a retry with it is recorded once.")] = "",
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
) -> None:
    """Record one event of a user with a running service (RecordEvent)."""
    from cascade.serving.client import EVENT_TYPES

    if event_type not in EVENT_TYPES:
        _fail(f"--type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}")
    reply = _call_service(
        target,
        lambda client: client.record_event(user_id, item_id, event_type, event_id=event_id, rating=rating),
    )
    note = " (a duplicate: recorded before)" if reply.duplicate else ""
    console.print(f"recorded; history length {reply.history_length}{note}")


@app.command("recommend")
def recommend(
    user_id: Annotated[str, typer.Option(help="User id.")],
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Item id to exclude (repeatable).")] = None,
    gender: Annotated[
        str, typer.Option(help="Demographics for a user the service does not know: F or M.")
    ] = "",
    age: Annotated[int, typer.Option(help="Demographics: age in years (0: unknown).")] = 0,
    occupation: Annotated[str, typer.Option(help="Demographics: occupation name.")] = "",
    zip_code: Annotated[str, typer.Option(help="Demographics: zip code.")] = "",
    budget_ms: Annotated[int, typer.Option(help="Time budget in ms (0: the call's deadline only).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    explain: Annotated[
        bool, typer.Option(help="Show the ranker's score and the rules that fired on each item.")
    ] = False,
    surface: Annotated[str, typer.Option(help="Where the list is shown, e.g. home (rules may ask).")] = "",
    genre: Annotated[
        list[str] | None, typer.Option(help="Keep only items of this genre (repeatable).")
    ] = None,
    without_genre: Annotated[
        list[str] | None, typer.Option(help="Drop items of this genre (repeatable).")
    ] = None,
    page_size: Annotated[int, typer.Option(help="Items per page (0: no paging; k items).")] = 0,
    pages: Annotated[int, typer.Option(help="With --page-size: how many pages to fetch.")] = 1,
) -> None:
    """Ask a running service for recommendations."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from cascade.serving.client import CascadeClient

    cfg = _config()
    target = target or f"{cfg.serving.host}:{cfg.serving.port}"
    replies = []
    with CascadeClient.for_config(cfg, target) as client:
        token = ""
        for _ in range(max(pages, 1) if page_size else 1):
            try:
                reply = client.recommend(
                    user_id,
                    k=k,
                    exclude_item_ids=exclude or [],
                    gender=gender,
                    age=age,
                    occupation=occupation,
                    zip_code=zip_code,
                    budget_ms=budget_ms,
                    explain=explain,
                    surface=surface,
                    include_genres=genre or [],
                    exclude_genres=without_genre or [],
                    page_size=page_size,
                    page_token=token,
                )
            except grpc.RpcError as exc:
                _fail(f"{exc.code().name}: {exc.details()}")
            replies.append(reply)
            token = reply.next_page_token
            if not token:
                break
    if as_json:
        for reply in replies:
            print(json.dumps(MessageToDict(reply)))
        return
    for reply in replies:
        _print_recommendations(user_id, reply, explain)


def _print_recommendations(user_id: str, reply, explain: bool) -> None:
    about = [*(["new user"] if reply.new_user else []), *([f"tier {reply.tier}"] if reply.tier else [])]
    table = Table(title=f"user {user_id}" + (f" ({', '.join(about)})" if about else ""))
    columns = ["#", "item_id", "title", "score", "source"]
    explored = any(item.propensity < 1 for item in reply.items)
    if explored:
        columns.append("propensity")
    if explain:
        columns += ["ranker score", "rules"]
    for col in columns:
        table.add_column(col)
    for item in reply.items:
        row = [str(item.position), item.item_id, item.title, f"{item.score:.4f}", item.source]
        if explored:
            row.append(f"{item.propensity:.3g}")
        if explain:
            ranker_score = item.explanation.ranker_score
            shown = "-" if math.isnan(ranker_score) else f"{ranker_score:.4f}"  # NaN: a pin added it
            row += [shown, ", ".join(item.explanation.rules)]
        table.add_row(*row)
    console.print(table)
    v = reply.model_versions
    console.print(f"models: recall {v.recall}, index {v.index}, ranking {v.ranking}; rules {v.rules}")
    if reply.removed_by_rule:
        removed = ", ".join(f"{rule} {count}" for rule, count in sorted(reply.removed_by_rule.items()))
        console.print(f"removed: {removed}")
    if reply.degraded:
        console.print(f"[yellow]degraded answer:[/] {', '.join(reply.degraded_reasons)}")


@segments_app.command("report")
def segments_report(
    dataset: ValueDatasetOption = "cdnow",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    period_days: PeriodOption = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            help="Rules the served data set's recommendations are replayed under (default: the config's)."
        ),
    ] = None,
) -> None:
    """Tier sizes and the share of the next period's value each holds, every value model's gain curve, tier
    migration between two cut-offs and, for the served data set, the genres each tier is recommended:
    markdown + PNG."""
    from cascade.bench import segments_report as report_module

    report = _run(report_module.run, _config(), dataset, period_days, rules)
    _wrote(
        report_module.write_outputs(report, json_path or Path(f"benchmarks/results/segments-{dataset}.json"))
    )
    console.print(report_module.summary(report))


@catalogue_app.command("upsert")
def catalogue_upsert(
    item_id: Annotated[str, typer.Option(help="The item to add, or whose content to replace.")],
    title: Annotated[str, typer.Option(help="Its title.")] = "",
    genre: Annotated[list[str] | None, typer.Option(help="A genre of the catalogue's (repeatable).")] = None,
    year: Annotated[int, typer.Option(help="Release year (0: unknown).")] = 0,
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
) -> None:
    """Add an item to the served catalogue, embedded from its content, or replace an item's content
    (CatalogueAdmin.UpsertItem): durable, and in force on every server within serving.reload_interval_s."""
    reply = _call_service(
        target, lambda client: client.upsert_item(item_id, title=title, genres=genre or [], year=year)
    )
    said = "added" if reply.created else "replaced"
    console.print(f"item {item_id} {said}; catalogue version {reply.catalogue_version}")


@catalogue_app.command("delete")
def catalogue_delete(
    item_id: Annotated[str, typer.Option(help="The item never to serve again.")],
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the service.")] = None,
) -> None:
    """Delete an item from the served catalogue (CatalogueAdmin.DeleteItem): durable, and in force on every
    server within serving.reload_interval_s."""
    reply = _call_service(target, lambda client: client.delete_item(item_id))
    said = "deleted" if reply.deleted else "was deleted already"
    console.print(f"item {item_id} {said}; catalogue version {reply.catalogue_version}")


JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the report here.")]


_HEADLINE_METRICS = (
    "recall@10",
    "recall@50",
    "recall@100",
    "recall@500",
    "ndcg@10",
    "coverage",
    "candidate_recall",
    "auc",
    "gauc",
    "logloss",
    "rmse",
    "mean_in_process_ms",
)


def _report(report: dict, json_path: Path | None, title: str) -> None:
    systems = {name: values for name, values in report.items() if name[0] != "_" and "grid" not in name}
    present = list(dict.fromkeys(m for values in systems.values() for m in values if m != "users"))
    # the headline metrics when the report has them; each system's settings stay in the JSON
    metrics = [m for m in _HEADLINE_METRICS if m in present] or present
    table = Table(title=title)
    table.add_column("system")
    for m in metrics:
        table.add_column(m)
    for system, values in systems.items():
        table.add_row(system, *(f"{values.get(m, float('nan')):.4g}" for m in metrics))
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, sort_keys=True))
        console.print(f"wrote {json_path}")


@evaluate_app.command("pipeline")
def evaluate_pipeline(json_path: JsonOption = None) -> None:
    """Recall@K and NDCG@10 of popularity, the two-tower alone, all channels and the whole pipeline."""
    from cascade.training.evaluate import evaluate_pipeline as run

    _report(_run(run, _config()), json_path, "held-out temporal split: pipeline")


ValueDatasetOption = Annotated[
    str,
    typer.Option(
        help="A prepared data set: a purchase log (cascade data fetch cdnow; cascade data synth --commerce "
        "makes NAME-commerce), or interactions (movielens-100k: activity stands in for spend)."
    ),
]
PeriodOption = Annotated[
    float | None,
    typer.Option(help="Days in a value period (default: customers.value_period_days; ML-100K spans 215)."),
]


@evaluate_app.command("value")
def evaluate_value(
    json_path: JsonOption = None, dataset: ValueDatasetOption = "cdnow", period_days: PeriodOption = None
) -> None:
    """Customer value in the next period: weighted RFM, the BP 14-29-1 network, LightGBM, k-means segments
    and (where there is money) BG/NBD + Gamma-Gamma CLV, by Spearman with the realised value and the share
    of it each quartile tier holds."""
    from cascade.training.value import evaluate_value as run

    report = _run(run, _config(), dataset, period_days)
    rows = {
        name: {
            "spearman": r["spearman"],
            "tier_a_share": r["value_share_by_tier"]["A"],
            "tier_a_lift": r["tier_a_lift"],
        }
        for name, r in report.items()
        if not name.startswith("_")
    }
    _report(rows, None, f"customer value, {dataset}: next-period {report['_split']['value']}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")


@evaluate_app.command("guard")
def evaluate_guard(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    attack: Annotated[
        list[str] | None, typer.Option(help="random, average, bandwagon or segment (repeatable; all).")
    ] = None,
    size: Annotated[
        list[float] | None,
        typer.Option(help="Fake profiles as a share of users (repeatable; 0.01 0.03 0.05)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Recall model measured: two-tower or ease (repeatable; both).")
    ] = None,
    targets: Annotated[int, typer.Option(help="Target items every fake profile pushes.")] = 3,
    live: Annotated[
        bool, typer.Option(help="Also record each attack live through RecordEvent's guard (a real Redis).")
    ] = True,
) -> None:
    """Shilling attacks injected into the served data set: the targets' hit ratio in the top 20 of genuine
    users without and with the guard's scan, the scan's precision and recall, and its NDCG@10 cost on clean
    data: markdown + PNG."""
    from cascade.bench import guard_attacks

    cfg = _config()
    report = _run(
        guard_attacks.run,
        cfg,
        tuple(attack or guard_attacks.ATTACK_KINDS),
        tuple(size or guard_attacks.ATTACK_SIZES),
        tuple(model or guard_attacks.MODELS),
        targets=targets,
        live=live,
    )
    json_path = json_path or Path(f"benchmarks/results/guard-{cfg.data.dataset}.json")
    _wrote(guard_attacks.write_outputs(report, json_path))
    console.print(guard_attacks.summary(report))


@evaluate_app.command("recall")
def evaluate_recall(json_path: JsonOption = None) -> None:
    """The served recall stage and the two-tower alone vs popularity and validation-tuned ALS, EASE and
    item-kNN: Recall@{10,50,100,500}, NDCG@10, coverage."""
    from cascade.training.evaluate import evaluate_recall as run

    _report(_run(run, _config()), json_path, "held-out temporal split: recall")


@evaluate_app.command("ranking")
def evaluate_ranking(json_path: JsonOption = None) -> None:
    """Wide&Deep vs DIN vs LightGBM on the held-out window's recall candidates: AUC, GAUC, logloss,
    NDCG@10 and Recall@10, beside the recall order alone."""
    from cascade.training.evaluate import evaluate_ranking as run

    _report(_run(run, _config(), True), json_path, "held-out temporal split: ranking")


@evaluate_app.command("rating")
def evaluate_rating(json_path: JsonOption = None) -> None:
    """Rating RMSE on a random 90/10 split: SVD++ hybrid, PMF, I-AutoRec and their validation-fitted blend."""
    from cascade.training.evaluate import evaluate_rating as run

    _report(_run(run, _config(), True), json_path, "random 90/10 split: rating RMSE")


def _progress(label: str) -> Callable[[str], None]:
    return lambda what: console.print(f"[cyan]{label}[/] {what}")


def _wrote(outputs: dict[str, Path]) -> None:
    for kind, path in outputs.items():
        console.print(f"wrote {kind}: {path}")


@bench_app.command("recall")
def bench_recall(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/recall.json"
    ),
    sizes: Annotated[str, typer.Option(help="Comma-separated catalogue sizes.")] = "100000,1000000",
    threads: Annotated[int, typer.Option(help="FAISS threads.")] = 2,
    target_recall: Annotated[float, typer.Option(help="recall@500 the knob is tuned to reach.")] = 0.95,
    catalogue: Annotated[
        str, typer.Option(help="clustered (equal topics) or mixture (heavy-tailed, overlapping topics).")
    ] = "clustered",
) -> None:
    """FAISS Flat / IVF / HNSW on synthetic catalogues: build time, memory, latency, recall against exact."""
    from cascade.bench.recall_index import CATALOGUES, BenchSettings, run, write_outputs

    if catalogue not in CATALOGUES:
        raise typer.BadParameter(f"must be one of {', '.join(CATALOGUES)}", param_hint="--catalogue")
    settings = BenchSettings(
        sizes=tuple(int(s) for s in sizes.split(",")),
        catalogue=catalogue,
        threads=threads,
        target_recall=target_recall,
    )
    report = run(settings, progress=_progress("benchmarking"))
    _wrote(write_outputs(report, json_path))


@bench_app.command("offline")
def bench_offline(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/offline.json"
    ),
    interactions: Annotated[int, typer.Option(help="Synthetic interactions.")] = 10_000_000,
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 200_000,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 100_000,
    ranking_users: Annotated[int, typer.Option(help="Users whose ranking examples are built.")] = 5_000,
    workers: Annotated[
        str, typer.Option(help="Comma-separated Ray worker counts, each run in turn.")
    ] = "1,2",
    partitions: Annotated[int, typer.Option(help="Parts each job is cut into on Ray.")] = 8,
    jobs: Annotated[str | None, typer.Option(help="Comma-separated jobs to run (default: all).")] = None,
) -> None:
    """The offline jobs in this process and on a local Ray with each worker count: time and equality."""
    from cascade.bench.offline_jobs import JOBS, OfflineBenchSettings, run, write_outputs

    chosen = JOBS if jobs is None else tuple(j.strip() for j in jobs.split(","))
    if unknown := set(chosen) - set(JOBS):
        raise typer.BadParameter(
            f"unknown {sorted(unknown)}; the jobs: {', '.join(JOBS)}", param_hint="--jobs"
        )

    settings = OfflineBenchSettings(
        interactions=interactions,
        users=users,
        items=items,
        ranking_users=ranking_users,
        workers=tuple(int(w) for w in workers.split(",")),
        partitions=partitions,
        jobs=chosen,
    )
    report = run(settings, progress=_progress("offline jobs"))
    _wrote(write_outputs(report, json_path))


@bench_app.command("memory")
def bench_memory(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/replica-memory.json"
    ),
    store: Annotated[
        bool, typer.Option(help="Also measure the feature store's bytes per user (serving.redis_url).")
    ] = True,
) -> None:
    """What a serving replica of the current models holds, per item, per user, per interaction: for sizing."""
    from cascade.bench.replica_memory import account, store_account, write_outputs

    report = _run(account, _config())
    if store:
        report["store"] = _run(store_account, _config())
    _wrote(write_outputs(report, json_path))


@bench_app.command("train")
def bench_train(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/train.json"
    ),
    scenarios: Annotated[
        str, typer.Option(help="Comma-separated scenarios (names under benchmarks/scenarios/ or TOMLs).")
    ] = "movielens-100k,synthetic-1m",
    steps: Annotated[int, typer.Option(help="Timed two-tower steps per variant (an epoch when fewer).")] = 40,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Two-tower training examples/s with sparse id-table gradients beside dense ones, per scenario."""
    from cascade.bench import serve_load, train_throughput

    say = _progress("bench train")
    configs = {}
    for name in scenarios.split(","):
        cfg = _scenario(name)
        _run(serve_load.prepare_scenario_data, cfg, say)
        configs[name] = cfg
    settings = train_throughput.TrainBenchSettings(steps=steps, threads=threads)
    report = _run(train_throughput.run, configs, settings, say)
    _wrote(train_throughput.write_outputs(report, json_path))


@bench_app.command("ranking")
def bench_ranking(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md go beside it.")] = Path(
        "benchmarks/results/ranking.json"
    ),
    candidates: Annotated[int, typer.Option(help="Candidates per request.")] = 500,
    behaviours: Annotated[int, typer.Option(help="Behaviours in the user's sequence.")] = 50,
    dim: Annotated[int, typer.Option(help="Behaviour / candidate vector width d.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed requests per implementation.")] = 200,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """DIN inference per request: the straightforward form, ours (split attention, user side once) and
    DeepCTR-Torch's DIN at the same sizes, p50 / p99."""
    from cascade.bench.ranking_inference import BenchSettings, run, write_outputs

    settings = BenchSettings(
        candidates=candidates,
        behaviours=behaviours,
        dim=dim,
        repeats=repeats,
        threads=threads,
        device=device,
    )
    report = run(settings, progress=_progress("benchmarking"))
    _wrote(write_outputs(report, json_path))


ScenarioOption = Annotated[
    str,
    typer.Option(
        help="Scenario: a name under benchmarks/scenarios/ (synthetic-1m, movielens-100k) or a TOML."
    ),
]


PrecisionOption = Annotated[
    str | None,
    typer.Option(help="DIN pair-product precision: float32 or bfloat16 (default: the scenario's)."),
]


def _scenario(
    scenario: str,
    processes: int | None = None,
    workers: int | None = None,
    precision: str | None = None,
    queue_size: int | None = None,
) -> AppConfig:
    from cascade.bench.serve_load import scenario_config

    cfg = load_config(_run(scenario_config, scenario))
    overrides = {
        "processes": processes,
        "workers": workers,
        "ranker_precision": precision,
        "queue_size": queue_size,
    }
    serving = {k: v for k, v in overrides.items() if v is not None}
    return cfg.model_copy(update={"serving": cfg.serving.model_copy(update=serving)}) if serving else cfg


@bench_app.command("serve")
def bench_serve(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    scenario: ScenarioOption = "synthetic-1m",
    target: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a service already running the scenario (with --balance requests, a "
            "comma-separated list of its processes' own addresses); else one is started."
        ),
    ] = None,
    rates: Annotated[str, typer.Option(help="Offered rates to sweep, requests/s, comma-separated.")] = (
        "25,50,100,150,200,300,400"
    ),
    duration: Annotated[float, typer.Option(help="Seconds per offered rate.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds at the lowest rate (discarded).")] = 3.0,
    max_requests: Annotated[int, typer.Option(help="Most requests per offered rate.")] = 20_000,
    k: Annotated[int, typer.Option(help="Items per request.")] = 20,
    channels: Annotated[
        int, typer.Option(help="gRPC connections to the shared port, with --balance connections.")
    ] = 16,
    balance: Annotated[
        str | None,
        typer.Option(
            help="requests: request i goes to server process i mod n, on its own port "
            "(serving.process_ports); connections: --channels connections to the shared port, spread "
            "over the processes by the kernel. Default: requests when the scenario sets process_ports."
        ),
    ] = None,
    arrivals: Annotated[str, typer.Option(help="uniform or poisson inter-arrival times.")] = "uniform",
    processes: Annotated[int | None, typer.Option(help="Server processes (default: the scenario's).")] = None,
    workers: Annotated[int | None, typer.Option(help="RPC threads per server process.")] = None,
    pin_cpu: Annotated[int | None, typer.Option(help="Pin the load generator to this CPU.")] = None,
    ranker_precision: PrecisionOption = None,
) -> None:
    """Open-loop load over gRPC against the scenario's service: latency percentiles from each request's
    scheduled send time against offered load, throughput, errors by code, and the server's stage breakdown."""
    from cascade.bench import serve_load

    cfg = _scenario(scenario, processes, workers, ranker_precision)
    settings = serve_load.LoadSettings(
        rates=tuple(float(r) for r in rates.split(",")),
        duration_s=duration,
        warmup_s=warmup,
        max_requests=max_requests,
        k=k,
        channels=channels,
        balance=balance or ("requests" if cfg.serving.process_ports is not None else "connections"),
        arrivals=arrivals,
        pin_cpu=pin_cpu,
        seed=cfg.seed,
    )
    json_path = json_path or Path(f"benchmarks/results/serve-{cfg.data.dataset}.json")
    report = _run(serve_load.run, cfg, settings, scenario, target, json_path, _progress("bench serve"))
    _wrote(serve_load.write_outputs(report, json_path))
    console.print(report["summary"])


@bench_app.command("stages")
def bench_stages(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    scenario: ScenarioOption = "synthetic-1m",
    requests: Annotated[int, typer.Option(help="Timed requests.")] = 300,
    k: Annotated[int, typer.Option(help="Items per request.")] = 20,
    ranker_precision: PrecisionOption = None,
    rules: Annotated[
        Path | None, typer.Option(help="A rules file to apply (e.g. rules/example.toml); default: none.")
    ] = None,
) -> None:
    """Each Recommend stage in-process (real Redis, real models, no gRPC), p50 / p99 / mean."""
    from cascade.bench import serve_load, serve_stages
    from cascade.serving.app import load_features, open_feature_store

    cfg = _scenario(scenario, precision=ranker_precision)
    if rules is not None:
        cfg = cfg.model_copy(update={"rerank": cfg.rerank.model_copy(update={"rules_path": rules})})
    json_path = json_path or Path(f"benchmarks/results/stages-{cfg.data.dataset}.json")
    say = _progress("bench stages")
    _run(serve_load.prepare_scenario, cfg, say)
    with open_feature_store(cfg, timeout_s=BULK_TIMEOUT_S) as store:
        load_features(cfg, store, if_changed=True)
        report = serve_stages.run(
            cfg, store, serve_load.scenario_user_ids(cfg), serve_stages.StageSettings(requests, k=k), say
        )
    _wrote(serve_stages.write_outputs(report, json_path))


@bench_app.command("rules")
def bench_rules(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    rules: Annotated[
        list[Path] | None, typer.Option(help="A rules file to evaluate beside the sweep (repeatable).")
    ] = None,
    mmr_sweep: Annotated[bool, typer.Option(help="MMR alone at lambda 0, 0.1, ..., 0.5.")] = True,
) -> None:
    """NDCG@10, recall, coverage, intra-list diversity, genre entropy and novelty of the pipeline without
    rules, with MMR alone at each lambda, and with each rules file, on the configured data set's held-out
    window and its current artifacts."""
    from cascade.bench import rules_quality

    cfg = _config()
    json_path = json_path or Path(f"benchmarks/results/rules-{cfg.data.dataset}.json")
    report = _run(rules_quality.run, cfg, list(rules or []), mmr_sweep)
    _wrote(rules_quality.write_outputs(report, json_path))
    console.print(rules_quality.summary(report))


@bench_app.command("failover")
def bench_failover(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md beside it.")] = Path(
        "benchmarks/results/failover.json"
    ),
    before_s: Annotated[float, typer.Option(help="Seconds of load before the master is killed.")] = 2.0,
    after_s: Annotated[float, typer.Option(help="Seconds of load after writes recover.")] = 3.0,
) -> None:
    """A Redis Cluster (3 masters, 3 replicas) and a Sentinel group, each with its master killed under
    load through the serving feature store: promotion time, refused writes, stale reads, and acknowledged
    events lost, with events waiting for a replica and without."""
    from cascade.bench import failover

    settings = failover.FailoverSettings(before_s=before_s, after_s=after_s)
    work_dir = json_path.with_name(json_path.stem + "-work")
    report = _run(failover.run, work_dir, settings, _progress("bench failover"))
    _wrote(failover.write_outputs(report, json_path))
    console.print(failover.summary(report))


@bench_app.command("balancer")
def bench_balancer(
    json_path: Annotated[Path, typer.Option("--json", help="Report path; .png and .md beside it.")] = Path(
        "benchmarks/results/balancer.json"
    ),
    replicas: Annotated[int, typer.Option(min=3, help="Serving replicas behind HAProxy.")] = 3,
    callers: Annotated[int, typer.Option(min=1, help="Closed-loop callers.")] = 4,
    phase_s: Annotated[float, typer.Option(help="Seconds of each load phase.")] = 6.0,
) -> None:
    """Replicas of the configured models (`cascade serve` processes, one Redis) behind HAProxy with
    deploy/haproxy: calls per replica, latency direct and through the balancer, and the calls that fail
    while one replica is drained (SIGTERM) and another killed (SIGKILL)."""
    from cascade.bench import balancer_load

    settings = balancer_load.BalancerSettings(replicas=replicas, callers=callers, phase_s=phase_s)
    work_dir = json_path.with_name(json_path.stem + "-work")
    report = _run(balancer_load.run, _config(), settings, work_dir, _progress("bench balancer"))
    _wrote(balancer_load.write_outputs(report, json_path))
    console.print(balancer_load.summary(report))


@bench_app.command("faults")
def bench_faults(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report path; .png and .md beside it.")
    ] = None,
    scenario: ScenarioOption = "faults-movielens-100k",
    rate: Annotated[
        float | None,
        typer.Option(help="Recommend requests per second, open loop (default: half the measured capacity)."),
    ] = None,
    outage_s: Annotated[float, typer.Option(help="Seconds Redis stays killed.")] = 10.0,
    fuzz_requests: Annotated[int, typer.Option(help="Fuzzed requests over all RPCs.")] = 10_000,
    rows: Annotated[
        str | None,
        typer.Option(
            help="Rows to run, comma-separated: redis-killed, redis-paused, deadline-5ms, deadline-20ms, "
            "overload, republish, corrupt, garbage, fuzz, sigterm (default: all)."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Recommend workers (default: the scenario's).")] = None,
    queue_size: Annotated[
        int | None, typer.Option(help="Queue per method (default: the scenario's).")
    ] = None,
    ranker_precision: PrecisionOption = None,
) -> None:
    """The fault matrix: Redis killed and paused, short deadlines, 3x overload, republication, corrupt
    artifacts, garbage bytes, fuzzing and SIGTERM, each under load against a served scenario."""
    import shutil

    from cascade.bench import faults, serve_load

    cfg = _scenario(scenario, workers=workers, precision=ranker_precision, queue_size=queue_size)
    json_path = json_path or Path(f"benchmarks/results/faults-{cfg.data.dataset}.json")
    say = _progress("bench faults")
    _run(serve_load.prepare_scenario, cfg, say)
    settings = faults.FaultSettings(
        rate=rate,
        outage_s=outage_s,
        fuzz_requests=fuzz_requests,
        rows=tuple(row.strip() for row in rows.split(",")) if rows else None,
    )
    work_dir = json_path.with_name(json_path.stem + "-work")  # the service's log and Redis's files
    shutil.rmtree(work_dir, ignore_errors=True)
    report = _run(faults.run, cfg, settings, work_dir, say)
    _wrote(faults.write_outputs(report, json_path))
    for row in report["rows"]:
        console.print(
            f"{'pass' if row['passed'] else '[bold red]MISS[/]'}  {row['fault']}: {row['measured']}"
        )


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
