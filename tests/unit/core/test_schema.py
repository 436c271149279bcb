"""The feature schema training and serving encode with."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cascade.core.errors import ArtifactError
from cascade.core.privacy import Pseudonymiser
from cascade.core.schema import (
    AGE_UNKNOWN,
    GENDER_UNKNOWN,
    FeatureSchema,
    encode_age,
    encode_gender,
    encode_year,
    title_words,
)
from tests.helpers import PSEUDONYMS


def test_gender_codes():
    assert encode_gender(["F", "M", "m", "", "x"]).tolist() == [0, 1, 1, GENDER_UNKNOWN, GENDER_UNKNOWN]


def test_age_buckets_agree_between_raw_ages_and_ml1m_codes():
    ml1m_codes = [1, 18, 25, 35, 45, 50, 56]
    assert encode_age(ml1m_codes).tolist() == [0, 1, 2, 3, 4, 5, 6]
    raw = [7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73]
    assert encode_age(raw).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert encode_age([-1]).tolist() == [AGE_UNKNOWN]


def test_title_words_drop_year_and_punctuation():
    assert title_words("Shawshank Redemption, The (1994)") == ["shawshank", "redemption", "the"]
    assert title_words("") == []


def test_year_buckets():
    assert encode_year([0, 1900, 1995, 1999, 2000]).tolist() == [0, 1, 20, 20, 21]


def _schema() -> tuple[FeatureSchema, pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame(
        {
            "user_id": [10, 3],
            "gender": ["F", "M"],
            "age": [30, -1],
            "occupation": ["writer", "artist"],
            "zip_code": ["", ""],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [5, 2],
            "title": ["Toy Story (1995)", "Toy Soldiers (1991)"],
            "genres": ["Animation|Comedy|Children's", "Action"],
            "year": [1995, 1991],
        }
    )
    return FeatureSchema.fit(users, items, max_genres=2, title_length=3, pseudonyms=PSEUDONYMS), users, items


def test_id_lookup_by_table_agrees_with_binary_search():
    """Dense ids get an id -> index table; sparse ones keep the binary search. Both map every id, known,
    unknown, negative or past the largest, as the search over the sorted ids does."""
    rng = np.random.default_rng(0)
    dense = np.sort(rng.choice(np.arange(0, 3000), size=1000, replace=False)).astype(np.int64)
    sparse = np.sort(rng.choice(10**12, size=1000, replace=False)).astype(np.int64)
    assert FeatureSchema.dense_id_table(dense) is not None
    assert FeatureSchema.dense_id_table(sparse) is None
    assert FeatureSchema.dense_id_table(np.array([-1, 2], dtype=np.int64)) is None
    queries = np.concatenate([dense[::7], rng.integers(-50, 3200, 500), [-(2**40), 2**40, 0]])
    by_table = FeatureSchema.lookup_ids(dense, queries, FeatureSchema.dense_id_table(dense))
    by_search = FeatureSchema.lookup_ids(dense, queries)
    assert by_table.dtype == np.int64
    np.testing.assert_array_equal(by_table, by_search)
    assert (by_search[: len(dense[::7])] == np.arange(0, len(dense), 7) + 1).all()


def test_schema_encodes_ids_vocabularies_and_padding():
    schema, users, items = _schema()
    assert schema.user_index([3, 10, 999]).tolist() == [1, 2, 0]
    assert schema.item_index([2, 5, 7]).tolist() == [1, 2, 0]
    assert schema.occupations == ("artist", "writer")
    assert schema.title_vocab[:2] == ("<PAD>", "<UNK>")

    enc_users = schema.encode_users(users)
    assert enc_users.gender.tolist() == [0, 1]
    assert enc_users.age.tolist() == [2, AGE_UNKNOWN]
    assert enc_users.occupation.tolist() == [2, 1]

    enc = schema.encode_items(items)
    genre_id = {g: i + 1 for i, g in enumerate(schema.genres)}
    # truncated to max_genres=2, padded with 0
    assert enc.genres[0].tolist() == [genre_id["Animation"], genre_id["Comedy"]]
    assert enc.genres[1].tolist() == [genre_id["Action"], 0]
    word_id = {w: i for i, w in enumerate(schema.title_vocab)}
    assert enc.title[0].tolist() == [word_id["toy"], word_id["story"], 0]

    unseen = schema.encode_items(
        pd.DataFrame({"item_id": [2], "title": ["Toy Zebra"], "genres": ["Western"], "year": [0]})
    )
    assert unseen.title[0].tolist() == [word_id["toy"], 1, 0]  # unknown word -> <UNK>
    assert unseen.genres[0].tolist() == [0, 0]  # genre not in vocabulary -> dropped


def test_tables_are_indexed_by_schema_index_and_roundtrip_json():
    schema, users, items = _schema()
    table = schema.item_table(items)
    assert table.genres.shape == (schema.num_items, 2)
    assert table.year[schema.item_index([5])[0]] == encode_year([1995])[0]
    assert table.genres[0].tolist() == [0, 0]
    utable = schema.user_table(users)
    assert utable.gender[0] == GENDER_UNKNOWN and utable.gender[schema.user_index([10])[0]] == 0

    again = FeatureSchema.from_json(schema.to_json(), PSEUDONYMS)
    assert np.array_equal(again.item_ids, schema.item_ids)
    assert again.title_vocab == schema.title_vocab and again.genres == schema.genres


def test_a_saved_schema_names_its_users_by_pseudonym_and_finds_them_by_id():
    schema, users, items = _schema()
    saved = json.loads(schema.to_json())
    assert "user_ids" not in saved and saved["pseudonym_key_id"] == PSEUDONYMS.key_id
    assert saved["user_pseudonyms"] == [PSEUDONYMS.of(u) for u in sorted(users["user_id"].tolist())]
    again = FeatureSchema.from_json(schema.to_json(), PSEUDONYMS)
    asked = [10, "11", 999, 10, "x"]  # ids as the service gets them, an unknown one, one not an integer
    assert again.user_index(asked).tolist() == schema.user_index(asked).tolist()
    assert again.num_users == schema.num_users and again.numeric_ids == schema.numeric_ids
    assert FeatureSchema.from_json(again.to_json(), PSEUDONYMS).user_index(asked).tolist() == (
        schema.user_index(asked).tolist()
    )  # saved again as read
    with pytest.raises(ArtifactError, match="pseudonym key"):
        FeatureSchema.from_json(schema.to_json(), Pseudonymiser(b"another-key-of-16-bytes"))
    with pytest.raises(ArtifactError, match="pseudonym key"):
        FeatureSchema.from_json(schema.to_json()).user_index([10])
    with pytest.raises(ValueError, match="pseudonym key"):
        FeatureSchema.fit(users, items, 2, 3).to_json()


def test_rating_scale_is_the_data_sets_and_survives_a_round_trip():
    """Half-star data (ml-latest-small rates 0.5-5) keeps its scale; a schema saved before the scale was
    recorded reads as the whole-star 1-5 every such artifact was trained on."""
    _, users, items = _schema()
    ratings = np.array([0.5, 3.5, 5.0], np.float32)
    half_stars = FeatureSchema.fit(users, items, 2, 3, ratings=ratings, pseudonyms=PSEUDONYMS)
    assert half_stars.rating_range == (0.5, 5.0)
    assert FeatureSchema.from_json(half_stars.to_json()).rating_range == (0.5, 5.0)
    raw = json.loads(half_stars.to_json())
    del raw["rating_range"]
    assert FeatureSchema.from_json(json.dumps(raw)).rating_range == (1.0, 5.0)
