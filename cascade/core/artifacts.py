"""Versioned artifact store with atomic publication.

Layout under the store root::

    <kind>/<version>/manifest.json   files with sha256, config, schema version, metrics, git commit
    <kind>/<version>/manifest.sig    HMAC-SHA256 of manifest.json, when the store has a signing key
    <kind>/<version>/...             the artifact's files
    <kind>/CURRENT                   the published version's name

A version is written into a hidden temp folder beside its final place, every file and the folder are
fsynced, and only then is it renamed into place; CURRENT is switched with an atomic replace. A crash at any
point leaves either the old state or the new one, never a half-written version.

The sha256 of each file guards against corruption; it does not stop someone who can write to the store
from changing a file and re-sealing the manifest. A store opened with a signing key signs every manifest it
publishes and refuses to read one whose signature is missing or wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cascade.core.errors import ArtifactError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
CURRENT = "CURRENT"
_TMP_PREFIX = ".tmp-"
# what a kind or a version may be called: a name, never a path (CURRENT is read from disk)
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts: decides whether an artifact must be rebuilt."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def git_commit() -> str:
    """Commit of the code that built an artifact, with ``-dirty`` when the tree had local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


@dataclass(frozen=True)
class ArtifactRef:
    """A published artifact version."""

    kind: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.manifest.get("fingerprint", "")

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise ArtifactError(f"{self.kind}/{self.version} has no file {name!r}")
        return self._inside(name)

    def _inside(self, name: str) -> Path:
        """``name``'s path in this version's folder, refused when it could lead anywhere else: an absolute
        name, a ``..`` in it, or a symbolic link on the way (a folder or the file itself)."""
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ArtifactError(f"{self.kind}/{self.version}: file name {name!r} leaves the artifact folder")
        path = self.path
        for part in relative.parts:
            path = path / part
            if path.is_symlink():
                raise ArtifactError(f"{self.kind}/{self.version}: {name} is a symbolic link; refused")
        return path

    def verify(self) -> None:
        """Check every file against the sha256 in the manifest, and that the folder holds nothing else: a
        file no manifest sealed (planted beside the sealed ones) or a symbolic link is refused."""
        sealed = set()
        for name, meta in self.manifest["files"].items():
            path = self._inside(name)
            if not path.is_file():
                raise ArtifactError(f"{self.kind}/{self.version}: missing file {name}")
            if sha256_file(path) != meta["sha256"]:
                raise ArtifactError(f"{self.kind}/{self.version}: {name} does not match its sha256")
            sealed.add(path.relative_to(self.path).as_posix())
        for path in sorted(self.path.rglob("*")):
            name = path.relative_to(self.path).as_posix()
            if path.is_symlink():
                raise ArtifactError(f"{self.kind}/{self.version}: {name} is a symbolic link; refused")
            if path.is_file() and name not in sealed and name not in (MANIFEST, SIGNATURE):
                raise ArtifactError(f"{self.kind}/{self.version}: {name} is not in the manifest; refused")


class ArtifactBundle:
    """Base of an artifact kind's bundle: the one module that writes and reads that kind's files (see
    ``cascade.recall.bundle`` and ``cascade.ranking.bundle``); this part reads what every manifest holds."""

    KIND: str

    def __init__(self, ref: ArtifactRef):
        if ref.kind != self.KIND:
            raise ArtifactError(f"{ref.kind}/{ref.version} is not a {self.KIND} artifact")
        self.ref = ref

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def config(self) -> dict[str, Any]:
        """The resolved app config the artifact was built with."""
        return self.ref.manifest["config"]

    @property
    def history_length(self) -> int:
        """Behaviours per user the artifact was built with (the config's features.history_length then)."""
        return int(self.config["features"]["history_length"])

    def parent(self, kind: str) -> str | None:
        """The version of ``kind`` this artifact was built from."""
        return self.ref.manifest.get("parents", {}).get(kind)


class ArtifactStore:
    def __init__(self, root: Path | str, signing_key: bytes | None = None):
        """``signing_key``: sign published manifests and refuse unsigned or mis-signed ones on read."""
        self.root = Path(root)
        self._signing_key = signing_key

    def _signature(self, manifest_bytes: bytes) -> str:
        assert self._signing_key is not None
        return hmac.new(self._signing_key, manifest_bytes, hashlib.sha256).hexdigest()

    def _check_signature(self, kind: str, version: str, path: Path, manifest_bytes: bytes) -> None:
        if self._signing_key is None:
            return
        signature_path = path / SIGNATURE
        if not signature_path.is_file():
            raise ArtifactError(
                f"artifact {kind}/{version} is not signed, and this store requires signatures"
            )
        if not hmac.compare_digest(signature_path.read_text().strip(), self._signature(manifest_bytes)):
            raise ArtifactError(f"artifact {kind}/{version}: the manifest's signature does not match")

    def current(self, kind: str) -> ArtifactRef | None:
        pointer = self.root / kind / CURRENT
        if not pointer.is_file():
            return None
        version = pointer.read_text().strip()
        return self.get(kind, version)

    def require(self, kind: str) -> ArtifactRef:
        ref = self.current(kind)
        if ref is None:
            raise ArtifactError(f"no published {kind!r} artifact under {self.root}; build it first")
        return ref

    def get(self, kind: str, version: str) -> ArtifactRef:
        if not _VERSION_NAME.fullmatch(version) or not _VERSION_NAME.fullmatch(kind):
            raise ArtifactError(f"artifact {kind!r}/{version!r}: not a kind and version name; refused")
        path = self.root / kind / version
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"artifact {kind}/{version} has no manifest under {self.root}")
        manifest_bytes = manifest_path.read_bytes()
        self._check_signature(kind, version, path, manifest_bytes)
        try:
            manifest = json.loads(manifest_bytes)
        except ValueError as exc:
            raise ArtifactError(f"artifact {kind}/{version}: unreadable manifest ({exc})") from None
        return ArtifactRef(kind, version, path, manifest)

    def versions(self, kind: str) -> list[str]:
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(_TMP_PREFIX))

    def set_current(self, kind: str, version: str) -> ArtifactRef:
        """Point CURRENT at an existing, intact version (atomic replace)."""
        ref = self.get(kind, version)
        ref.verify()
        atomic_write_bytes(self.root / kind / CURRENT, (version + "\n").encode())
        logger.info("%s CURRENT -> %s", kind, version)
        return ref

    def previous(self, kind: str) -> ArtifactRef:
        """The version published just before the current one (versions sort by publication time)."""
        current = self.require(kind)
        older = [v for v in self.versions(kind) if v < current.version]
        if not older:
            raise ArtifactError(f"{kind} {current.version} is the oldest version; nothing to roll back to")
        return self.get(kind, older[-1])

    def remove_stale_temp(self, kind: str, older_than_s: float = 3600.0) -> list[str]:
        """Delete temp folders left by publications that died (killed, power loss) over an hour ago.

        Younger ones may belong to a publication still running, so they are left alone."""
        folder = self.root / kind
        removed = []
        if not folder.is_dir():
            return removed
        cutoff = time.time() - older_than_s
        for path in folder.iterdir():
            if path.name.startswith(_TMP_PREFIX) and path.stat().st_mtime < cutoff:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def publish(
        self,
        kind: str,
        write_files: Callable[[Path], None],
        *,
        fingerprint: str,
        config: dict[str, Any],
        schema_version: int,
        metrics: dict[str, Any] | None = None,
        parents: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        """Write a new version with ``write_files(folder)`` and make it CURRENT, atomically."""
        kind_dir = self.root / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temp(kind)
        # microseconds in the name: versions sort in publication order, which rollback relies on
        now = time.time_ns() // 1000
        stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 1_000_000))}.{now % 1_000_000:06d}"
        version = f"{stamp}-{fingerprint[:8]}-{uuid.uuid4().hex[:4]}"
        tmp = kind_dir / f"{_TMP_PREFIX}{version}"
        tmp.mkdir()
        try:
            write_files(tmp)
            files = {}
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    _fsync_path(path)
                    files[str(path.relative_to(tmp))] = {
                        "sha256": sha256_file(path),
                        "bytes": path.stat().st_size,
                    }
            manifest = {
                "kind": kind,
                "version": version,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "fingerprint": fingerprint,
                "schema_version": schema_version,
                "git_commit": git_commit(),
                "config": config,
                "metrics": metrics or {},
                "parents": parents or {},
                "files": files,
                **(extra or {}),
            }
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            with open(tmp / MANIFEST, "wb") as fh:
                fh.write(manifest_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            if self._signing_key is not None:
                with open(tmp / SIGNATURE, "w") as fh:
                    fh.write(self._signature(manifest_bytes) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            _fsync_path(tmp)
            final = kind_dir / version
            os.rename(tmp, final)
            _fsync_path(kind_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_bytes(kind_dir / CURRENT, (version + "\n").encode())
        logger.info("published %s/%s", kind, version)
        return self.get(kind, version)
