"""Changes to the served catalogue between trainings, kept in the feature store's Redis so that every server
process, a restarted one and one on new models apply the same catalogue.

    cascade:catalogue:v1:deleted   set  id tokens (``keys.id_token``) of the items never to serve again
    cascade:catalogue:v1:version   str  a counter of the changes: servers poll it, and read the rest when it
                                        moved

Outside the users' keyspaces: a keyspace switch (a new history length) does not touch the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from cascade.serving.feature_store import keys

DELETED_KEY = b"cascade:catalogue:v1:deleted"
VERSION_KEY = b"cascade:catalogue:v1:version"

# Delete one item: the set and the version change together, and a repeat changes neither.
# KEYS: deleted set, version. ARGV: item token. Returns {added (0/1), version}.
_DELETE_SCRIPT = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 1 then
  return {added, redis.call('INCR', KEYS[2])}
end
return {added, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""


@dataclass(frozen=True)
class CatalogueState:
    version: int  # 0: no change was ever made
    deleted: tuple[str, ...]  # ids (as text) of the deleted items


class CatalogueChanges:
    """The catalogue's changes in Redis. Calls raise redis errors; the server maps them to UNAVAILABLE."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._delete = client.register_script(_DELETE_SCRIPT)

    def delete(self, item_id: int | str) -> tuple[bool, int]:
        """Record ``item_id`` (as the catalogue spells it) deleted -> (newly deleted, catalogue version)."""
        added, version = self._delete(keys=[DELETED_KEY, VERSION_KEY], args=[keys.id_token(item_id)])
        return bool(added), int(version)

    def version(self) -> int:
        raw = self.client.get(VERSION_KEY)
        return int(raw) if raw is not None else 0

    def state(self) -> CatalogueState:
        """The version and the deleted items, read together (one transaction)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(VERSION_KEY)
        pipe.smembers(DELETED_KEY)
        raw_version, members = pipe.execute()
        deleted = tuple(sorted(keys.id_of_token(member) for member in members))
        return CatalogueState(int(raw_version) if raw_version is not None else 0, deleted)
