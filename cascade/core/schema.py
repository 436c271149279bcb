"""FeatureSchema: the one description of every feature, shared by training and serving.

Encoding rules (index 0 is always padding or "unknown" unless stated):
    user id       -> 1..U in ascending id order; 0 for an id unseen at fit time
    item id       -> 1..I in ascending id order; 0 is padding
                     Ids are integers when every id of the data set is one (MovieLens), else opaque strings
                     (SKUs, UUIDs: any non-empty UTF-8 of at most MAX_ID_BYTES bytes), ordered by code point;
                     the schema holds both vocabularies, and ``parse_ids`` reads ids arriving as text
    gender        -> F 0, M 1, unknown 2
    age           -> 7 ordered buckets matching ML-1M's codes (1, 18, 25, 35, 45, 50, 56), so raw ML-100K
                     ages and ML-1M codes land in the same bucket; 7 when unknown
    occupation    -> 1..O in sorted name order
    zip prefix    -> 1..Z over the first ``zip_prefix_length`` characters of the zip code, sorted; 0 unknown
    genres        -> padded list of genre ids (1..G)
    title         -> padded list of word ids; 0 <PAD>, 1 <UNK>, then the vocabulary
    release year  -> 5-year bucket, 0 unknown
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cascade.core.errors import ArtifactError
from cascade.core.privacy import Pseudonymiser

# 3: a saved schema names its users by pseudonym, not by id (2, by id, is still read)
SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (2, 3)

# The recall channels, named once: each candidate carries its channel's name through ranking (where it
# is a categorical feature) to the response.
TWO_TOWER = "two_tower"
COOCCURRENCE = "cooccurrence"
SEGMENT_POPULAR = "segment_popular"
POPULAR = "popular"
ITEM_ITEM = "item_item"
# appended, never reordered: a channel's position is its code in the rankers' features
RECALL_CHANNELS = (TWO_TOWER, COOCCURRENCE, SEGMENT_POPULAR, POPULAR, ITEM_ITEM)

# the longest external user or item id, in UTF-8 bytes
MAX_ID_BYTES = 256

# event types by name, numbered as in the service's EventType enum and the feature store's history entries
EVENT_TYPES = {"view": 1, "click": 2, "rate": 3, "purchase": 4}

GENDER_CODES = {"F": 0, "M": 1}
GENDER_UNKNOWN = 2
AGE_BUCKET_LOWER_BOUNDS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M's codes are the buckets' lower bounds
AGE_UNKNOWN = len(AGE_BUCKET_LOWER_BOUNDS)
PAD, UNK = "<PAD>", "<UNK>"
YEAR_BUCKET_START, YEAR_BUCKET_WIDTH, YEAR_BUCKETS = 1900, 5, 26
# the scale of schemas saved before it was recorded: every such artifact was trained on whole stars 1-5
DEFAULT_RATING_RANGE = (1.0, 5.0)

_TITLE_YEAR = re.compile(r"\(\d{4}\)\s*$")
_WORD = re.compile(r"[a-z0-9']+")


def is_numeric(ids: np.ndarray) -> bool:
    return ids.dtype.kind in "iu"


def id_array(values: Any) -> np.ndarray:
    """A column of ids as int64 when every id is an integer, else as an object array of str."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return np.array([str(v) for v in arr.tolist()], dtype=object)


def parse_ids(values: Any, numeric: bool) -> np.ndarray:
    """Ids as text (or already of the kind) -> int64 for a numeric vocabulary, where text that is not a
    decimal int64 becomes -1 (found nowhere); object str otherwise."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(_as_list(values), dtype=object)
    if not numeric:
        return np.array([_text(v) for v in arr.tolist()], dtype=object)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    try:  # every id decimal: one conversion
        return arr.astype(np.int64)
    except (ValueError, OverflowError, TypeError):
        return np.array([_int_or_missing(v) for v in arr.tolist()], dtype=np.int64)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int_or_missing(value: Any) -> int:
    text = _text(value)
    if not text or not (text.isascii() and (text.isdigit() or (text[0] == "-" and text[1:].isdigit()))):
        return -1
    number = int(text)
    return number if -(2**63) <= number < 2**63 else -1


def native_id(value: Any) -> int | str:
    """A numpy id scalar as the Python int or str it holds (dict keys, JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _kind(ids: np.ndarray) -> str:
    return "int" if is_numeric(ids) else "str"


def _from_kind(values: list, kind: str) -> np.ndarray:
    if kind == "int":
        return np.asarray(values, dtype=np.int64)
    return np.array([str(v) for v in values], dtype=object)


def encode_gender(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    return np.array([GENDER_CODES.get(str(v).upper(), GENDER_UNKNOWN) for v in arr], dtype=np.int64)


def encode_age(values: Any) -> np.ndarray:
    """Raw ages or ML-1M codes -> bucket 0..6; negative or missing -> AGE_UNKNOWN."""
    ages = np.asarray(values, dtype=np.float64)
    bucket = np.searchsorted(np.asarray(AGE_BUCKET_LOWER_BOUNDS), ages, side="right") - 1
    # minimum/maximum, not np.clip: the same result at a third of the cost on a request's one age
    bucket = np.minimum(np.maximum(bucket, 0), AGE_UNKNOWN - 1)
    return np.where(np.isnan(ages) | (ages < 0), AGE_UNKNOWN, bucket).astype(np.int64)


def encode_year(values: Any) -> np.ndarray:
    years = np.asarray(values, dtype=np.int64)
    bucket = np.clip((years - YEAR_BUCKET_START) // YEAR_BUCKET_WIDTH + 1, 1, YEAR_BUCKETS - 1)
    return np.where(years > 0, bucket, 0).astype(np.int64)


def title_words(title: str) -> list[str]:
    """Lower-cased words of a title without its trailing "(year)"."""
    return _WORD.findall(_TITLE_YEAR.sub("", title or "").lower())


def zip_prefix(zip_code: Any, length: int) -> str:
    """Leading characters of a zip code, upper-cased; "" when missing or shorter than ``length``."""
    text = str(zip_code or "").strip().upper()
    return text[:length] if len(text) >= length else ""


def split_genres(genres: str) -> list[str]:
    return [g for g in (genres or "").split("|") if g]


USER_FIELDS = ("user", "gender", "age", "occupation", "zip")


@dataclass(frozen=True)
class UserFeatures:
    """Encoded user features, one row per user; every array has shape (N,)."""

    user: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray


@dataclass(frozen=True)
class ItemFeatures:
    """Encoded item features. ``item``/``year``: (N,); ``genres``: (N, max_genres); ``title``: (N, L)."""

    item: np.ndarray
    genres: np.ndarray
    title: np.ndarray
    year: np.ndarray


@dataclass(frozen=True)
class FeatureSchema:
    """The vocabularies of every categorical feature. A fitted schema holds its users' ids; a saved one
    holds their pseudonyms instead (``cascade.core.privacy``), so that no artifact lists who the users are,
    and a schema read back looks users up by the pseudonym of their id, with the key it was saved with."""

    user_ids: np.ndarray  # sorted external ids; position + 1 is the index (empty in a schema read back)
    item_ids: np.ndarray
    occupations: tuple[str, ...]
    genres: tuple[str, ...]
    title_vocab: tuple[str, ...]  # starts with PAD, UNK
    max_genres: int
    title_length: int
    zip_prefixes: tuple[str, ...] = ()
    zip_prefix_length: int = 2
    # the data set's rating scale: ML-100K rates 1-5 in whole stars, later MovieLens releases 0.5-5 in halves
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE
    version: int = SCHEMA_VERSION
    # items added while serving (CatalogueAdmin.UpsertItem), indices num_items, num_items + 1, ...: never
    # saved, unknown to every model (``num_items`` counts the trained catalogue only)
    added_item_ids: tuple = ()
    # a schema read back: its users by pseudonym (position + 1 is the index), whether their ids are integers
    user_pseudonyms: tuple[str, ...] | None = None
    user_ids_numeric: bool | None = None
    pseudonym_key_id: str | None = None
    # the key of the users' pseudonyms: to save a fitted schema, to look users up in a read one
    pseudonyms: Pseudonymiser | None = field(default=None, compare=False, repr=False)

    # --- sizes of every categorical feature, for embedding tables -------------------------------------
    @property
    def num_users(self) -> int:
        if self.user_pseudonyms is not None:
            return len(self.user_pseudonyms) + 1
        return len(self.user_ids) + 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) + 1

    @property
    def num_genders(self) -> int:
        return GENDER_UNKNOWN + 1

    @property
    def num_ages(self) -> int:
        return AGE_UNKNOWN + 1

    @property
    def num_occupations(self) -> int:
        return len(self.occupations) + 1

    @property
    def num_zip_prefixes(self) -> int:
        return len(self.zip_prefixes) + 1

    @property
    def num_genres(self) -> int:
        return len(self.genres) + 1

    @property
    def num_title_words(self) -> int:
        return len(self.title_vocab)

    @property
    def num_years(self) -> int:
        return YEAR_BUCKETS

    def cardinality(self, feature: str) -> int:
        return {
            "user": self.num_users,
            "item": self.num_items,
            "gender": self.num_genders,
            "age": self.num_ages,
            "occupation": self.num_occupations,
            "zip": self.num_zip_prefixes,
            "genre": self.num_genres,
            "year": self.num_years,
        }[feature]

    # --- fitting ------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        users: pd.DataFrame,
        items: pd.DataFrame,
        max_genres: int,
        title_length: int,
        zip_prefix_length: int = 2,
        ratings: Any = None,
        pseudonyms: Pseudonymiser | None = None,
    ) -> FeatureSchema:
        """Build vocabularies from the catalogue tables; of the interactions, only ``ratings`` (every rating
        value in the data set) is looked at, for the scale predicted and recorded ratings must keep to.
        ``pseudonyms``: the key its users are saved under (a schema fitted without one cannot be saved)."""
        rating_range = DEFAULT_RATING_RANGE
        if ratings is not None and len(ratings) > 0:
            values = np.asarray(ratings, dtype=np.float64)
            rating_range = (float(np.nanmin(values)), float(np.nanmax(values)))
        words = sorted({w for t in items["title"] for w in title_words(t)})
        prefixes = {zip_prefix(z, zip_prefix_length) for z in users["zip_code"]} - {""}
        return cls(
            user_ids=np.sort(id_array(users["user_id"].to_numpy())),
            item_ids=np.sort(id_array(items["item_id"].to_numpy())),
            occupations=tuple(sorted({o for o in users["occupation"] if o})),
            genres=tuple(sorted({g for gs in items["genres"] for g in split_genres(gs)})),
            title_vocab=(PAD, UNK, *words),
            max_genres=max_genres,
            title_length=title_length,
            zip_prefixes=tuple(sorted(prefixes)),
            zip_prefix_length=zip_prefix_length,
            rating_range=rating_range,
            pseudonyms=pseudonyms,
        )

    # --- id mapping ---------------------------------------------------------------------------------
    @staticmethod
    def lookup_ids(sorted_ids: np.ndarray, ids: Any, table: np.ndarray | dict | None = None) -> np.ndarray:
        """ids -> their indices (1-based position in ``sorted_ids``, 0 when absent), through ``table`` (a
        ``dense_id_table``, or for string ids a dict) when given, else by binary search. ``ids`` must be of
        the vocabulary's kind (``parse_ids`` turns text into it)."""
        if isinstance(table, dict):
            return np.fromiter((table.get(i, 0) for i in _as_list(ids)), dtype=np.int64)
        if not is_numeric(sorted_ids):
            ids = np.asarray(_as_list(ids), dtype=object)
            pos = np.searchsorted(sorted_ids, ids) if len(ids) else np.zeros(0, dtype=np.int64)
            pos_clipped = np.minimum(pos, max(len(sorted_ids) - 1, 0))
            found = (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == ids) if len(sorted_ids) else pos < 0
            return np.where(found, pos + 1, 0).astype(np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        if table is not None:
            inside = (ids >= 0) & (ids < len(table))
            return np.where(inside, table[np.where(inside, ids, 0)], 0).astype(np.int64)
        pos = np.searchsorted(sorted_ids, ids)
        pos_clipped = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == ids) if len(sorted_ids) else pos < 0
        return np.where(found, pos + 1, 0).astype(np.int64)

    @staticmethod
    def dense_id_table(sorted_ids: np.ndarray) -> np.ndarray | dict | None:
        """id -> index as one array when the ids are non-negative and dense (at most 4 slots per id): a
        lookup is then one gather, where a binary search over a million ids makes ~20 probes that each miss
        the cache. None for sparse ids. String ids: a dict, one hash per lookup instead of ~20 string
        comparisons."""
        if not is_numeric(sorted_ids):
            return {item: position + 1 for position, item in enumerate(sorted_ids.tolist())}
        if len(sorted_ids) == 0 or sorted_ids[0] < 0 or sorted_ids[-1] >= 4 * len(sorted_ids) + 1024:
            return None
        table = np.zeros(int(sorted_ids[-1]) + 1, dtype=np.int32)
        table[sorted_ids] = np.arange(1, len(sorted_ids) + 1, dtype=np.int32)
        return table

    @cached_property
    def _user_table(self) -> np.ndarray | dict | None:
        if self.user_pseudonyms is not None:
            return {pseudonym: position + 1 for position, pseudonym in enumerate(self.user_pseudonyms)}
        return self.dense_id_table(self.user_ids)

    @property
    def _users_numeric(self) -> bool:
        return self.user_ids_numeric if self.user_ids_numeric is not None else is_numeric(self.user_ids)

    @cached_property
    def _item_table(self) -> np.ndarray | dict | None:
        return self.dense_id_table(self.item_ids)

    @property
    def numeric_ids(self) -> bool:
        """Whether the data set's ids are integers (else opaque strings)."""
        return is_numeric(self.item_ids) and self._users_numeric

    def parse_user_ids(self, ids: Any) -> np.ndarray:
        """Ids as text (a request's, the feature store's) -> the user vocabulary's kind (``parse_ids``);
        ``user_index`` parses its ids with it."""
        return parse_ids(ids, self._users_numeric)

    def parse_item_ids(self, ids: Any) -> np.ndarray:
        """Ids as text -> the item vocabulary's kind (``parse_ids``)."""
        return parse_ids(ids, is_numeric(self.item_ids))

    def user_index(self, user_ids: Any) -> np.ndarray:
        """External user ids (N,), of the vocabulary's kind or as text, -> indices (N,); 0 for unknown
        users."""
        parsed = self.parse_user_ids(user_ids)
        if self.user_pseudonyms is None:
            return self.lookup_ids(self.user_ids, parsed, self._user_table)
        if self.pseudonyms is None:
            raise ArtifactError("this schema knows its users by pseudonym: read it with the pseudonym key")
        distinct, inverse = np.unique(parsed, return_inverse=True)
        table = self._user_table
        found = np.array([table.get(self.pseudonyms.of(u), 0) for u in distinct.tolist()], dtype=np.int64)
        return found[inverse.reshape(-1)] if len(parsed) else np.zeros(0, dtype=np.int64)

    def item_index(self, item_ids: Any) -> np.ndarray:
        """External item ids (N,), of the vocabulary's kind or as text, -> indices (N,); 0 for unknown items.
        Items added while serving too."""
        parsed = self.parse_item_ids(item_ids)
        found = self.lookup_ids(self.item_ids, parsed, self._item_table)
        if self.added_item_ids and not found.all():
            table = self._added_table
            ids = parsed.tolist()
            for row in np.flatnonzero(found == 0).tolist():
                found[row] = table.get(ids[row], 0)
        return found

    @cached_property
    def _added_table(self) -> dict:
        return {item: self.num_items + position for position, item in enumerate(self.added_item_ids)}

    @property
    def num_served_items(self) -> int:
        """The trained catalogue and the items added while serving, with the padding row."""
        return self.num_items + len(self.added_item_ids)

    def item_id_of(self, indices: Any) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if not self.added_item_ids or not (indices >= self.num_items).any():
            return self.item_ids[indices - 1]
        added = np.array(self.added_item_ids, dtype=self.item_ids.dtype)
        trained = indices < self.num_items
        out = np.empty(len(indices), dtype=self.item_ids.dtype)
        out[trained] = self.item_ids[indices[trained] - 1]
        out[~trained] = added[indices[~trained] - self.num_items]
        return out

    # --- encoding -----------------------------------------------------------------------------------
    @cached_property
    def _occupation_lookup(self) -> dict[str, int]:
        # built once: serving encodes an occupation on every request
        return {o: i + 1 for i, o in enumerate(self.occupations)}

    def encode_occupation(self, values: Any) -> np.ndarray:
        lookup = self._occupation_lookup
        return np.array([lookup.get(str(v), 0) for v in np.asarray(values, dtype=object)], dtype=np.int64)

    @cached_property
    def _zip_lookup(self) -> dict[str, int]:
        return {z: i + 1 for i, z in enumerate(self.zip_prefixes)}

    def encode_zip(self, values: Any) -> np.ndarray:
        lookup, length = self._zip_lookup, self.zip_prefix_length
        return np.array(
            [lookup.get(zip_prefix(v, length), 0) for v in np.asarray(values, dtype=object)], dtype=np.int64
        )

    def encode_users(self, users: pd.DataFrame) -> UserFeatures:
        return UserFeatures(
            user=self.user_index(users["user_id"].to_numpy()),
            gender=encode_gender(users["gender"].to_numpy()),
            age=encode_age(users["age"].to_numpy()),
            occupation=self.encode_occupation(users["occupation"].to_numpy()),
            zip=self.encode_zip(users["zip_code"].to_numpy()),
        )

    def encode_items(self, items: pd.DataFrame) -> ItemFeatures:
        genre_lookup = {g: i + 1 for i, g in enumerate(self.genres)}
        word_lookup = {w: i for i, w in enumerate(self.title_vocab)}
        genres = np.zeros((len(items), self.max_genres), dtype=np.int64)
        titles = np.zeros((len(items), self.title_length), dtype=np.int64)
        for row, (gs, title) in enumerate(zip(items["genres"], items["title"])):
            ids = [genre_lookup[g] for g in split_genres(gs) if g in genre_lookup][: self.max_genres]
            genres[row, : len(ids)] = ids
            words = [word_lookup.get(w, 1) for w in title_words(title)][: self.title_length]
            titles[row, : len(words)] = words
        return ItemFeatures(
            item=self.item_index(items["item_id"].to_numpy()),
            genres=genres,
            title=titles,
            year=encode_year(items["year"].to_numpy()),
        )

    def user_table(self, users: pd.DataFrame) -> UserFeatures:
        """Encoded features for every known user, row i describing user index i (row 0: unknown user)."""
        encoded = self.encode_users(users)
        table = UserFeatures(
            user=np.arange(self.num_users, dtype=np.int64),
            gender=np.full(self.num_users, GENDER_UNKNOWN, dtype=np.int64),
            age=np.full(self.num_users, AGE_UNKNOWN, dtype=np.int64),
            occupation=np.zeros(self.num_users, dtype=np.int64),
            zip=np.zeros(self.num_users, dtype=np.int64),
        )
        known = encoded.user > 0
        for name in ("gender", "age", "occupation", "zip"):
            getattr(table, name)[encoded.user[known]] = getattr(encoded, name)[known]
        return table

    def item_table(self, items: pd.DataFrame) -> ItemFeatures:
        """Encoded features for every catalogue item, row i describing item index i (row 0 is padding)."""
        encoded = self.encode_items(items)
        table = ItemFeatures(
            item=np.arange(self.num_items, dtype=np.int64),
            genres=np.zeros((self.num_items, self.max_genres), dtype=np.int64),
            title=np.zeros((self.num_items, self.title_length), dtype=np.int64),
            year=np.zeros(self.num_items, dtype=np.int64),
        )
        known = encoded.item > 0
        table.genres[encoded.item[known]] = encoded.genres[known]
        table.title[encoded.item[known]] = encoded.title[known]
        table.year[encoded.item[known]] = encoded.year[known]
        return table

    # --- persistence --------------------------------------------------------------------------------
    def to_json(self) -> str:
        if self.user_pseudonyms is not None:
            users = list(self.user_pseudonyms)
        elif self.pseudonyms is not None:
            users = [self.pseudonyms.of(u) for u in self.user_ids.tolist()]
        else:
            raise ValueError("a schema is saved with its users by pseudonym: fit it with the pseudonym key")
        key_id = self.pseudonyms.key_id if self.pseudonyms is not None else self.pseudonym_key_id
        return json.dumps(
            {
                "version": SCHEMA_VERSION,
                "id_kinds": {"user": "int" if self._users_numeric else "str", "item": _kind(self.item_ids)},
                "user_pseudonyms": users,
                "pseudonym_key_id": key_id,
                "item_ids": self.item_ids.tolist(),
                "occupations": list(self.occupations),
                "genres": list(self.genres),
                "title_vocab": list(self.title_vocab),
                "max_genres": self.max_genres,
                "title_length": self.title_length,
                "zip_prefixes": list(self.zip_prefixes),
                "zip_prefix_length": self.zip_prefix_length,
                "rating_range": list(self.rating_range),
            }
        )

    @classmethod
    def from_json(cls, text: str, pseudonyms: Pseudonymiser | None = None) -> FeatureSchema:
        """A saved schema; ``pseudonyms``, the key its users were saved under, to look them up."""
        raw = json.loads(text)
        if raw.get("version") not in READABLE_SCHEMA_VERSIONS:
            raise ArtifactError(f"feature schema version {raw.get('version')} != supported {SCHEMA_VERSION}")
        # schemas saved before string ids existed record no kinds: their ids are integers
        user_kind = raw.get("id_kinds", {}).get("user", "int")
        by_pseudonym = {}
        if "user_pseudonyms" in raw:
            key_id = raw.get("pseudonym_key_id")
            if pseudonyms is not None and key_id != pseudonyms.key_id:
                raise ArtifactError(
                    f"the schema's users were saved under the pseudonym key {key_id}, this process has "
                    f"{pseudonyms.key_id}: configure that key, or train again"
                )
            by_pseudonym = {
                "user_pseudonyms": tuple(raw["user_pseudonyms"]),
                "user_ids_numeric": user_kind == "int",
                "pseudonym_key_id": key_id,
                "pseudonyms": pseudonyms,
            }
        return cls(
            user_ids=_from_kind(raw.get("user_ids", []), user_kind),
            **by_pseudonym,
            item_ids=_from_kind(raw["item_ids"], raw.get("id_kinds", {}).get("item", "int")),
            occupations=tuple(raw["occupations"]),
            genres=tuple(raw["genres"]),
            title_vocab=tuple(raw["title_vocab"]),
            max_genres=int(raw["max_genres"]),
            title_length=int(raw["title_length"]),
            zip_prefixes=tuple(raw["zip_prefixes"]),
            zip_prefix_length=int(raw["zip_prefix_length"]),
            rating_range=tuple(float(r) for r in raw.get("rating_range", DEFAULT_RATING_RANGE)),
        )

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path, pseudonyms: Pseudonymiser | None = None) -> FeatureSchema:
        return cls.from_json(Path(path).read_text(), pseudonyms)
