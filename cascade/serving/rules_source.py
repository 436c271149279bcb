"""The rules file the server applies, re-read when it changes on disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cascade.core.errors import ConfigError
from cascade.rerank.rules_file import RulesFile, load_rules

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]  # (mtime_ns, size, inode): an edit or an atomic rename changes it
_MISSING: _Stamp = (0, 0, 0)  # the stamp of a file that cannot be read


class RulesSource:
    """``path``'s rules: read (and validated) at construction, so a server never starts on a bad file, then
    re-read by ``poll`` when the file's stamp changes. ``current`` is the last version accepted; a version
    refused is reported once, not at every poll."""

    def __init__(self, path: Path | None):
        self.path = path
        self.current: RulesFile | None = None
        self._stamp: _Stamp | None = None
        self._refused: _Stamp | None = None
        if path is not None:
            self._stamp = self._read_stamp()
            self.current = load_rules(path)

    def _read_stamp(self) -> _Stamp:
        assert self.path is not None
        try:
            status = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"rules file {self.path}: cannot read it: {exc.strerror}") from exc
        return status.st_mtime_ns, status.st_size, status.st_ino

    def poll(self) -> tuple[_Stamp, RulesFile] | None:
        """The file's new rules when it changed since the version accepted (or refused) last, else None;
        ConfigError (once per change) when the new file cannot be read or does not validate."""
        if self.path is None:
            return None
        try:
            stamp = self._read_stamp()
        except ConfigError:
            if self._refused == _MISSING:
                return None
            self._refused = _MISSING
            raise
        if stamp == self._stamp or stamp == self._refused:
            return None
        try:
            return stamp, load_rules(self.path)
        except ConfigError:
            self._refused = stamp
            raise

    def accept(self, stamp: _Stamp, rules: RulesFile) -> None:
        self._stamp, self._refused, self.current = stamp, None, rules

    def refuse(self, stamp: _Stamp) -> None:
        self._refused = stamp
