"""Changes to the served catalogue between trainings, kept in the feature store's Redis so that every server
process, a restarted one and one on new models apply the same catalogue.

    cascade:{catalogue}:v2:deleted   set  id tokens (``keys.id_token``) of the items never to serve again
    cascade:{catalogue}:v2:items     hash id token -> JSON of an upserted item: id, title, genres, year,
                                          attributes, and ``seq``, the order items were first upserted in
    cascade:{catalogue}:v2:seq       str  the last ``seq`` given
    cascade:{catalogue}:v2:version   str  a counter of the changes: servers poll it, and read the rest when
                                          it moved

Outside the users' keyspaces: a keyspace switch (a new history length) does not touch the catalogue. One
hash tag, so that on Redis Cluster the four keys share a node and change together. Version 1 had the same
keys untagged (``cascade:catalogue:v1:*``); one server's v1 keys are renamed at the first use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from redis.cluster import RedisCluster

from cascade.serving.feature_store import keys
from cascade.serving.feature_store.connect import RedisClient

logger = logging.getLogger(__name__)

DELETED_KEY = b"cascade:{catalogue}:v2:deleted"
ITEMS_KEY = b"cascade:{catalogue}:v2:items"
SEQ_KEY = b"cascade:{catalogue}:v2:seq"
VERSION_KEY = b"cascade:{catalogue}:v2:version"
_V1_KEYS = [
    b"cascade:catalogue:v1:" + key.rpartition(b":")[2]
    for key in (DELETED_KEY, ITEMS_KEY, SEQ_KEY, VERSION_KEY)
]

# Rename version 1's keys, unless version 2 holds changes already (then they are the newer). Atomic, so two
# servers starting together rename once. KEYS: v2 deleted, items, seq, version, then v1's. Returns renamed.
_UPGRADE_SCRIPT = """
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[8]) == 0 then return 0 end
local renamed = 0
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i + 4]) == 1 then
    redis.call('RENAME', KEYS[i + 4], KEYS[i])
    renamed = renamed + 1
  end
end
return renamed
"""

# Upsert one item: its record (keeping the seq of its first upsert), out of the deleted set, and the
# version, together. KEYS: items, deleted, seq, version. ARGV: item token, the record's JSON without seq.
# Returns {created (0/1), version}.
_UPSERT_SCRIPT = """
local record = cjson.decode(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
local created = 0
if old then
  record['seq'] = cjson.decode(old)['seq']
else
  record['seq'] = redis.call('INCR', KEYS[3])
  created = 1
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
redis.call('SREM', KEYS[2], ARGV[1])
return {created, redis.call('INCR', KEYS[4])}
"""

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
class ItemRecord:
    """An upserted item's content, as UpsertItem gave it."""

    item_id: str
    title: str
    genres: tuple[str, ...]
    year: int
    attributes: dict[str, str] = field(default_factory=dict)
    seq: int = 0  # the order items were first upserted in

    def to_json(self) -> str:
        fields = {"item_id": self.item_id, "title": self.title, "genres": list(self.genres)}
        # cjson turns an empty object into an empty array: the attributes travel as pairs
        fields |= {"year": self.year, "attributes": sorted(self.attributes.items())}
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> ItemRecord:
        raw = json.loads(text)
        return cls(
            str(raw["item_id"]),
            str(raw["title"]),
            tuple(raw["genres"]),
            int(raw["year"]),
            {str(k): str(v) for k, v in raw.get("attributes") or []},
            int(raw["seq"]),
        )


@dataclass(frozen=True)
class CatalogueState:
    version: int  # 0: no change was ever made
    deleted: tuple[str, ...]  # ids (as text) of the deleted items
    items: tuple[ItemRecord, ...] = ()  # upserted items, in the order they were first upserted


class CatalogueChanges:
    """The catalogue's changes in Redis. Calls raise redis errors; the server maps them to UNAVAILABLE."""

    def __init__(self, client: RedisClient):
        self.client = client
        self._delete = client.register_script(_DELETE_SCRIPT)
        self._upsert = client.register_script(_UPSERT_SCRIPT)
        self._upgrade = client.register_script(_UPGRADE_SCRIPT)
        self._upgraded = isinstance(client, RedisCluster)  # version 1 never worked on a cluster

    def _upgrade_once(self) -> None:
        if not self._upgraded:
            if self._upgrade(keys=[DELETED_KEY, ITEMS_KEY, SEQ_KEY, VERSION_KEY, *_V1_KEYS]):
                logger.info("the catalogue's changes moved to key layout v2")
            self._upgraded = True

    def delete(self, item_id: int | str) -> tuple[bool, int]:
        """Record ``item_id`` (as the catalogue spells it) deleted -> (newly deleted, catalogue version)."""
        self._upgrade_once()
        added, version = self._delete(keys=[DELETED_KEY, VERSION_KEY], args=[keys.id_token(item_id)])
        return bool(added), int(version)

    def upsert(self, record: ItemRecord) -> tuple[bool, int]:
        """Record an item's content -> (a new item, catalogue version)."""
        self._upgrade_once()
        created, version = self._upsert(
            keys=[ITEMS_KEY, DELETED_KEY, SEQ_KEY, VERSION_KEY],
            args=[keys.id_token(record.item_id), record.to_json()],
        )
        return bool(created), int(version)

    def version(self) -> int:
        self._upgrade_once()
        raw = self.client.get(VERSION_KEY)
        return int(raw) if raw is not None else 0

    def state(self) -> CatalogueState:
        """The version and the deleted items, read together (one transaction)."""
        self._upgrade_once()
        pipe = self.client.pipeline(transaction=True)
        pipe.get(VERSION_KEY)
        pipe.smembers(DELETED_KEY)
        pipe.hvals(ITEMS_KEY)
        raw_version, members, records = pipe.execute()
        deleted = tuple(sorted(keys.id_of_token(member) for member in members))
        items = tuple(sorted((ItemRecord.from_json(raw) for raw in records), key=lambda r: r.seq))
        return CatalogueState(int(raw_version) if raw_version is not None else 0, deleted, items)
