"""Each GroupLens layout, on tiny files written here in that layout."""

from __future__ import annotations

import io
import zipfile

import pandas as pd
import pytest

from cascade.core.errors import DataError
from cascade.data.dataset import Dataset
from cascade.data.fetch import fetch
from cascade.data.movielens import ML100K_GENRES, load_grouplens, load_widedeep_parquet


def _ml100k_files() -> dict[str, bytes]:
    flags_toy = ["0"] * len(ML100K_GENRES)
    flags_toy[ML100K_GENRES.index("Animation")] = "1"
    flags_toy[ML100K_GENRES.index("Comedy")] = "1"
    flags_gold = ["0"] * len(ML100K_GENRES)
    flags_gold[ML100K_GENRES.index("Action")] = "1"
    return {
        "ml-100k/u.data": b"1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n",
        "ml-100k/u.item": (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_toy) + "\n"
            "2|GoldenEye (1995)|01-Jan-1995||http://y|" + "|".join(flags_gold) + "\n"
        ).encode("latin-1"),
        "ml-100k/u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n",
        "ml-100k/u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)).encode(),
    }


def _write_zip(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_ml100k_folder(tmp_path):
    for name, data in _ml100k_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    ds = load_grouplens(tmp_path / "ml-100k")
    assert ds.name == "movielens-100k"
    assert len(ds.interactions) == 3
    assert ds.interactions["rating"].tolist() == [5.0, 3.0, 4.0]
    toy = ds.items.set_index("item_id").loc[1]
    assert toy["genres"] == "Animation|Comedy"
    assert toy["year"] == 1995
    assert ds.users.set_index("user_id").loc[2, "gender"] == "F"
    assert ds.users.set_index("user_id").loc[1, "age"] == 24


def test_ml1m_zip(tmp_path):
    files = {
        "ml-1m/ratings.dat": b"1::10::5::978300760\n2::20::3::978302109\n",
        "ml-1m/movies.dat": (
            "10::Am\xe9lie (2001)::Comedy|Romance\n20::Heat (1995)::Action|Crime|Thriller\n"
        ).encode("latin-1"),
        "ml-1m/users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n",
    }
    _write_zip(tmp_path / "ml-1m.zip", files)
    ds = load_grouplens(tmp_path / "ml-1m.zip")
    assert ds.name == "movielens-1m"
    items = ds.items.set_index("item_id")
    assert items.loc[10, "title"] == "Amélie (2001)"  # latin-1 decoded
    assert items.loc[20, "genres"] == "Action|Crime|Thriller"
    users = ds.users.set_index("user_id")
    assert users.loc[1, "occupation"] == "K-12 student"  # code 10
    assert users.loc[2, "occupation"] == "self-employed"  # code 16
    assert users.loc[2, "age"] == 56


def test_ml_latest_csv_without_user_table(tmp_path, caplog):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n7,2,0.5,964981247\n"
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Untitled,(no genres listed)\n"
    )
    with caplog.at_level("WARNING", logger="cascade.data.dataset"):
        ds = load_grouplens(folder, name="ml-latest-small")
    assert "2 of 2 users have no profile row" in caplog.text  # said, not filled in silently
    assert ds.name == "ml-latest-small"
    assert ds.interactions["rating"].tolist() == [4.5, 0.5]
    items = ds.items.set_index("item_id")
    assert items.loc[1, "year"] == 1995 and items.loc[2, "year"] == 0
    assert items.loc[2, "genres"] == ""
    # users exist for every interaction, with unknown demographics
    assert sorted(ds.users["user_id"]) == [1, 7]
    assert (ds.users["age"] == -1).all() and (ds.users["gender"] == "").all()


def test_unknown_layout_and_missing_path(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no MovieLens layout"):
        load_grouplens(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_grouplens(tmp_path / "nope")


def test_interactions_must_reference_known_items(tmp_path):
    files = _ml100k_files()
    files["ml-100k/u.data"] += b"1\t99\t5\t874965759\n"
    _write_zip(tmp_path / "bad.zip", files)
    with pytest.raises(DataError, match="missing from the items table"):
        load_grouplens(tmp_path / "bad.zip")


def test_widedeep_parquet_layout_and_fetch_from_path(tmp_path):
    ratings = pd.DataFrame({"user_id": [1, 2], "movie_id": [1, 1], "rating": [5, 4], "timestamp": [10, 20]})
    users = pd.DataFrame(
        {
            "user_id": [1, 2],
            "age": [24, 53],
            "gender": ["M", "F"],
            "occupation": ["a", "b"],
            "zip_code": ["1", "2"],
        }
    )
    items = pd.DataFrame(
        {"movie_id": [1], "movie_title": ["Toy Story (1995)"], "release_date": ["01-Jan-1995"]}
        | {g: [1 if g == "Comedy" else 0] for g in ML100K_GENRES}
    )

    def parquet(df):
        buf = io.BytesIO()
        df.to_parquet(buf, compression="brotli")
        return buf.getvalue()

    ds = load_widedeep_parquet(parquet(ratings), parquet(users), parquet(items))
    assert ds.items["genres"].tolist() == ["Comedy"]
    assert ds.interactions["item_id"].tolist() == [1, 1]

    # `data fetch --from` prepares a dataset folder that loads back identically, and is cached
    for name, data in _ml100k_files().items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    target = fetch("movielens-100k", tmp_path / "data", source=tmp_path / "src")
    loaded = Dataset.load(target)
    assert len(loaded.interactions) == 3
    first = Dataset.fingerprint_of(target)
    assert fetch("movielens-100k", tmp_path / "data", source=tmp_path / "src") == target
    assert Dataset.fingerprint_of(target) == first


def test_a_missing_dataset_names_the_prepared_ones_and_how_to_choose(tmp_path):
    for name in ("ml-latest-small", "movielens-100k"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text("{}")
    (tmp_path / "half-written").mkdir()  # no dataset.json: not prepared
    for read in (Dataset.load, Dataset.fingerprint_of):
        with pytest.raises(DataError) as err:
            read(tmp_path / "ml-1m")
        message = str(err.value)
        assert "'ml-1m'" in message and "ml-latest-small, movielens-100k" in message
        assert "half-written" not in message and "--dataset" in message
    with pytest.raises(DataError, match="none under"):
        Dataset.load(tmp_path / "empty" / "x")
