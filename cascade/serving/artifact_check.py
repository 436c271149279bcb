"""Checking a model set before the server loads it: in a child process, so that a file that crashes a
native parser (LightGBM's aborts on a truncated model; FAISS's may) kills the child, not the server."""

from __future__ import annotations

import logging
import multiprocessing
import signal
from multiprocessing.connection import Connection

from cascade.config import AppConfig
from cascade.core.errors import ArtifactError

logger = logging.getLogger(__name__)


def check_in_child(config: AppConfig, versions: dict[str, str], timeout_s: float = 900.0) -> None:
    """Load ``versions`` as serving would (every file parsed, the ranker in its serving form) and answer a
    warm-up request, in a fresh process; ArtifactError if it fails, crashes or outlasts ``timeout_s``."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked server threads
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_check, args=(config.child_json(), versions, send), name="cascade-artifact-check"
    )
    child.start()
    send.close()
    try:
        ready = receive.poll(timeout_s)
        outcome = receive.recv() if ready else None
    except EOFError:  # the child died without a word: a native crash
        outcome = None
    finally:
        child.join(timeout=5 if outcome is not None else 0.1)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if outcome == "ok":
        return
    if outcome is not None:
        raise ArtifactError(f"model set {versions} failed its check: {outcome}")
    code = child.exitcode
    if code is not None and code < 0:
        how = f"crashed ({signal.Signals(-code).name})"
    elif code is None or child.is_alive():
        how = f"did not finish within {timeout_s:.0f} s"
    else:
        how = f"exited with status {code}"
    raise ArtifactError(f"model set {versions} failed its check: loading it {how}")


def _check(config_json: str, versions: dict[str, str], send: Connection) -> None:
    import torch

    from cascade.serving.models import ServingModels
    from cascade.serving.pipeline import RecommendationPipeline

    torch.set_num_threads(1)  # stay off the cores the server is answering on
    config = AppConfig.model_validate_json(config_json)
    try:
        models = ServingModels.load(config.artifact_store(), config, versions)
        RecommendationPipeline(models, config).warm_up()
    except Exception as exc:  # any failure is the verdict, sent back whole
        send.send(f"{type(exc).__name__}: {exc}")
    else:
        send.send("ok")
    finally:
        send.close()
