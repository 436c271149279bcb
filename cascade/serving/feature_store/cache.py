"""A small in-process cache: the feature store's profile cache and the server's cache of users' last states
read both use it."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MISSING = object()  # what ``get`` returns for a key that is absent or expired


class TTLCache:
    """Thread-safe LRU cache whose entries expire ``ttl_s`` seconds after being stored."""

    def __init__(self, max_size: int, ttl_s: float):
        self.max_size, self.ttl_s = max_size, ttl_s
        self._data: OrderedDict[int, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> object:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return MISSING
            if entry[0] < time.monotonic():
                del self._data[key]
                return MISSING
            self._data.move_to_end(key)
            return entry[1]

    def put(self, key: int, value: object) -> None:
        if self.max_size == 0 or self.ttl_s == 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic() + self.ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def update(self, key: int, change: Callable[[object], object]) -> None:
        """Replace a live entry's value with ``change(value)``, keeping when it expires; nothing when the
        key is absent or expired."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] >= time.monotonic():
                self._data[key] = (entry[0], change(entry[1]))

    def discard(self, key: int) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
