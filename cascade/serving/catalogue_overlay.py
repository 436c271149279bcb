"""The served catalogue with its changes since training applied: items added (``UpsertItem`` of an unknown
id) get the indices after the trained catalogue's, a vector from the item tower's content path, a row in
every table serving reads, and a place in the index (``GrowingIndex``); items whose content was replaced
keep their index and vector and take the new title, genres and year. The trained models themselves are not
touched: they see an added item as the unknown item 0 (``RecommendationPipeline.rank``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from cascade.core.schema import FeatureSchema
from cascade.recall.index import GrowingIndex
from cascade.rerank.catalogue import ItemAttributes
from cascade.serving.catalogue_changes import ItemRecord
from cascade.serving.models import ServingModels, item_lookup

# lookups a schema builds at first use, carried over to the schema with the added items: rebuilding them
# would cost the first request after every change (a dict of a million string ids takes about a second)
_CACHED = ("_item_table", "_user_table", "_occupation_lookup", "_zip_lookup")


def with_catalogue(models: ServingModels, records: tuple[ItemRecord, ...]) -> ServingModels:
    """``models`` (as loaded, with no change applied) with ``records`` applied, in their ``seq`` order."""
    if not records:
        return models
    schema = models.schema
    parsed = schema.parse_item_ids([record.item_id for record in records])
    known = schema.item_index(parsed)
    added = [record for record, index in zip(records, known.tolist()) if index == 0]
    replaced = [(index, record) for record, index in zip(records, known.tolist()) if index > 0]
    table = _encode(schema, records, parsed)
    rows = {record.item_id: row for row, record in enumerate(records)}
    extended = dataclasses.replace(
        schema, added_item_ids=tuple(parsed[rows[record.item_id]] for record in added)
    )
    for name in _CACHED:
        if name in schema.__dict__:
            extended.__dict__[name] = schema.__dict__[name]
    attributes = models.attributes
    genres, years, titles = attributes.genres.copy(), attributes.years.copy(), models.titles.copy()
    for index, record in replaced:
        row = rows[record.item_id]
        genres[index], years[index], titles[index] = table.genres[row], record.year, record.title
    added_rows = np.array([rows[record.item_id] for record in added], dtype=np.int64)
    if len(added):
        vectors = models.embed_content(_take(table, added_rows)) if models.embed_content else None
        if vectors is None:
            raise RuntimeError("these models cannot embed new items: no item tower")
        index = GrowingIndex(
            models.index.base if isinstance(models.index, GrowingIndex) else models.index, vectors
        )
    else:
        index = models.index
    genres = np.concatenate([genres, table.genres[added_rows]])
    years = np.concatenate([years, np.array([record.year for record in added], dtype=years.dtype)])
    titles = np.concatenate([titles, np.array([record.title for record in added], dtype=object)])
    popularity = np.concatenate([models.popularity, np.zeros(len(added), dtype=models.popularity.dtype)])

    return dataclasses.replace(
        models,
        schema=extended,
        titles=titles,
        popularity=popularity,
        index=index,
        attributes=ItemAttributes(
            item_lookup=item_lookup(extended),
            genres=genres,
            genre_names=attributes.genre_names,
            years=years,
            quality=np.concatenate([attributes.quality, np.full(len(added), np.nan)]),
            vectors=index.embeddings,
            popularity=popularity,
        ),
    )


def _encode(schema: FeatureSchema, records: tuple[ItemRecord, ...], ids: np.ndarray):
    """The records' content encoded as item-table rows (genres, title words, year), one per record; ``ids``
    the records' ids in the schema's kind."""
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "title": [record.title for record in records],
            "genres": ["|".join(record.genres) for record in records],
            "year": [record.year for record in records],
        }
    )
    return schema.encode_items(frame)


def _take(table, rows: np.ndarray):
    return dataclasses.replace(
        table,
        item=np.zeros(len(rows), dtype=np.int64),
        genres=table.genres[rows],
        title=table.title[rows],
        year=table.year[rows],
    )
