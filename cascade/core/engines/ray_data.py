"""The Ray engine: a job's parts as the blocks of a Ray Data dataset, each run by one Ray task.

The parts travel as the dataset's blocks (``ray.data.from_pandas_refs``, one block per part) and the job, with
what it reads besides its part, goes once into Ray's object store. Each task's result comes back as one row
per part, each array in NumPy's own file format (``allow_pickle=False``), so that dtypes and shapes arrive
exactly as they left. Ray itself serialises the job between this process and its workers (cloudpickle):
that is Ray's protocol inside one cluster, under the same trust as the machines it runs on; nothing read
from storage is unpickled.

Without ``offline.ray_address`` a Ray local to the command starts with ``offline.workers`` CPUs and stops
with the engine; with one, the engine joins that cluster, whose nodes need the same ``cascade-recsys[ray]``
installed.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pandas as pd

from cascade.core.engines.base import OfflineEngine, PartitionedJob, PartResult
from cascade.core.engines.config import OfflineConfig

logger = logging.getLogger(__name__)

_PART = "__part"
_RESULT = "result:"
_cached_job: dict[str, PartitionedJob] = {}  # a worker keeps the job it last ran, not one per part


def _encode(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _decode(cell: bytes) -> np.ndarray:
    return np.load(io.BytesIO(cell), allow_pickle=False)


def _job(reference) -> PartitionedJob:
    import ray

    key = reference.hex()
    if key not in _cached_job:
        _cached_job.clear()
        _cached_job[key] = ray.get(reference)
    return _cached_job[key]


def _run_parts(batch: dict[str, np.ndarray], job: list, sizes: list[int]) -> dict[str, np.ndarray]:
    """One block of the dataset: every part in it, each checked whole (a part split between blocks would
    lose the pairs, users or customers that straddle the cut)."""
    runner = _job(job[0])
    part_ids = batch[_PART]
    columns = [name for name in batch if name != _PART]
    results: dict[str, list[bytes]] = {}
    done = []
    for part in np.unique(part_ids).tolist():
        rows = part_ids == part
        if int(rows.sum()) != sizes[part]:
            raise RuntimeError(
                f"{runner.name}: part {part} arrived with {int(rows.sum())} of its {sizes[part]} rows"
            )
        result = runner.run_part({name: batch[name][rows] for name in columns})
        for name, array in result.items():
            results.setdefault(_RESULT + name, []).append(_encode(array))
        done.append(part)
    out = {_PART: np.array(done, dtype=np.int64)}
    for name, cells in results.items():
        column = np.empty(len(cells), dtype=object)
        column[:] = cells
        out[name] = column
    return out


class RayDataEngine(OfflineEngine):
    """Parts run as Ray Data tasks of one CPU each, at most ``workers`` at once (0: as many as Ray has)."""

    name = "ray"

    def __init__(self, config: OfflineConfig):
        try:
            import ray
            from ray.data import DataContext
        except ImportError as exc:
            raise RuntimeError("offline.engine = 'ray' needs Ray: pip install 'cascade-recsys[ray]'") from exc
        self._ray = ray
        self.partitions = config.partitions
        self.workers = config.workers
        self._started_here = False
        if not ray.is_initialized():
            options: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
            if config.ray_address is not None:
                ray.init(address=config.ray_address, **options)
            else:
                # a local Ray's workers must import this checkout's cascade even when it is not installed
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(_import_roots())}}
                if config.workers:
                    options["num_cpus"] = config.workers
                if config.object_store_mb:
                    options["object_store_memory"] = config.object_store_mb << 20
                ray.init(**options)
            self._started_here = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per dataset run at INFO
        context = DataContext.get_current()
        context.enable_progress_bars = False
        logger.info(
            "offline jobs on Ray %s: %s CPUs, %d parts, %s at once",
            ray.__version__,
            int(ray.cluster_resources().get("CPU", 0)),
            self.partitions,
            self.workers or "as many as there are CPUs",
        )

    def map_parts(self, job: PartitionedJob, parts: list[pd.DataFrame]) -> list[PartResult]:
        if not parts:
            return []
        ray = self._ray
        frames = [
            part.assign(**{_PART: np.full(len(part), i, dtype=np.int64)}) for i, part in enumerate(parts)
        ]
        # one object, so one block and one task's input, per part (from_pandas may bundle several)
        dataset = ray.data.from_pandas_refs([ray.put(frame) for frame in frames]).map_batches(
            _run_parts,
            fn_kwargs={"job": [ray.put(job)], "sizes": [len(part) for part in parts]},
            batch_format="numpy",
            batch_size=None,  # a whole block, that is one part, per call
            compute=ray.data.TaskPoolStrategy(size=min(self.workers, len(parts)) if self.workers else None),
            num_cpus=1,
        )
        results: dict[int, PartResult] = {}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row, part in enumerate(batch[_PART].tolist()):
                if part in results:
                    raise RuntimeError(f"{job.name}: part {part} came back twice")
                results[part] = {
                    name[len(_RESULT) :]: _decode(batch[name][row]) for name in batch if name != _PART
                }
        missing = sorted(set(range(len(parts))) - set(results))
        if missing:
            raise RuntimeError(f"{job.name}: parts {missing} never came back")
        return [results[i] for i in range(len(parts))]

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_here = False


def _import_roots() -> list[str]:
    """The folder holding this ``cascade`` package, before whatever the environment's path already is."""
    import cascade

    root = os.path.dirname(os.path.dirname(os.path.abspath(cascade.__file__)))
    existing = os.environ.get("PYTHONPATH", "")
    return [root, *([existing] if existing else [])]
