"""The FAISS index, always checked against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.recall.index import GrowingIndex, ItemIndex, exact_search


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_exact_search_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    items, queries = _unit(rng, 2000, 16), _unit(rng, 50, 16)
    index = ItemIndex.build(items, "Flat", seed=0)
    _, found = index.search(queries, 20)
    _, exact = exact_search(items, queries, 20)
    assert np.array_equal(found, exact)
    assert found.min() >= 1  # item indices start at 1
    # exact really is exact: compare with numpy
    brute = np.argsort(-(queries @ items.T), axis=1)[:, :20] + 1
    assert np.array_equal(exact, brute)
    index.save(tmp_path)
    again = ItemIndex.load(tmp_path)
    assert np.array_equal(again.search(queries, 20)[1], found)


def test_ivf_index_is_checked_against_exact():
    rng = np.random.default_rng(1)
    items, queries = _unit(rng, 5000, 16), _unit(rng, 100, 16)
    index = ItemIndex.build(items, "IVF32,Flat", seed=0)
    index.cpu_index.nprobe = 32  # every list: exact
    assert index.recall_against_exact(queries, 50) == pytest.approx(1.0)
    index.cpu_index.nprobe = 1
    assert index.recall_against_exact(queries, 50) < 0.9  # approximate search loses some


def _clustered(rng, n, d, topics=40):
    centres = _unit(rng, topics, d)
    x = centres[rng.integers(0, topics, n)] + rng.normal(size=(n, d)).astype(np.float32) * 0.1
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("factory", "knob"), [("IVF64,Flat", "nprobe"), ("HNSW16", "efSearch")])
def test_tuning_picks_the_smallest_knob_reaching_the_target_and_it_survives_a_reload(tmp_path, factory, knob):
    rng = np.random.default_rng(2)
    items = _clustered(rng, 6000, 16)
    tune_q, check_q = _clustered(rng, 100, 16), _clustered(rng, 100, 16)
    index = ItemIndex.build(items, factory, seed=0)
    result = index.tune(tune_q, 50, target_recall=0.9)
    assert result.parameter == knob and result.recall >= 0.9
    values = list(result.curve)
    assert values[-1] == result.value and all(result.curve[v] < 0.9 for v in values[:-1])  # smallest
    assert index.recall_against_exact(check_q, 50) >= 0.85  # holds on queries it was not tuned on
    index.save(tmp_path)
    again = ItemIndex.load(tmp_path)
    assert again.search_params == {knob: result.value}
    assert np.array_equal(again.search(check_q, 50)[1], index.search(check_q, 50)[1])


def test_similar_items_excludes_the_item_itself():
    rng = np.random.default_rng(3)
    items = _unit(rng, 500, 8)
    index = ItemIndex.build(items, "Flat", seed=0)
    found, _ = index.similar(7, 5)
    assert 7 not in found and len(found) == 5
    brute = np.argsort(-(items @ items[6]))[1:6] + 1
    assert found.tolist() == brute.tolist()


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_a_growing_index_finds_added_items_as_exact_search_over_both(factory):
    rng = np.random.default_rng(4)
    base_vectors, added = _unit(rng, 600, 16), _unit(rng, 7, 16)
    base = ItemIndex.build(base_vectors, factory, seed=0)
    if factory != "Flat":
        base.set_search_parameter("nprobe", 16)  # every list: the base's own search is exact too
    grown = GrowingIndex(base, added)
    assert grown.size == 607 and grown.embeddings.shape == (607, 16)
    queries = _unit(rng, 20, 16)
    scores, items = grown.search(queries, 10)
    exact_scores, exact_rows = exact_search(grown.embeddings, queries, 10)
    np.testing.assert_array_equal(items, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    # an added item is found by its own vector, and its neighbours exclude it
    assert grown.search(added[2:3], 1)[1][0, 0] == 603
    neighbours, _ = grown.similar(603, 5)
    assert len(neighbours) == 5 and 603 not in neighbours
    assert (
        GrowingIndex(base, np.zeros((0, 16))).search(queries, 10)[1].tolist()
        == base.search(queries, 10)[1].tolist()
    )
