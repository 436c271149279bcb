"""The two-tower model: towers, training, cold start, and the user tower's serving form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.core.schema import FeatureSchema
from cascade.data.synthetic import generate
from cascade.recall.config import RecallConfig
from cascade.recall.text_cnn import TitleCNN
from cascade.recall.training import InteractionSequences, embed_items, embed_users, train_two_tower
from cascade.recall.two_tower import HistoryAttentionPooling, TwoTowerModel, TwoTowerSpec, masked_mean
from cascade.recall.user_query import UserQueryEncoder
from tests.unit.recall.held_out import HISTORY, held_out_problem, held_out_recall


def test_title_cnn_shapes_and_padding_does_not_matter():
    torch.manual_seed(0)
    cnn = TitleCNN(vocab_size=30, word_dim=8, windows=(2, 3, 4, 5), filters_per_window=4, out_dim=6)
    titles = torch.tensor([[3, 4, 5, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0, 0]])
    out = cnn(titles)
    assert out.shape == (2, 6) and torch.all(out.abs() <= 1)  # Tanh output
    longer = torch.nn.functional.pad(titles, (0, 5))  # more padding: same vectors
    assert torch.allclose(cnn(longer), out, atol=1e-6)
    short = cnn(torch.tensor([[9]]))  # a title shorter than the widest window still works
    assert short.shape == (1, 6)


def test_history_attention_ignores_padding_and_empty_history_is_zero():
    torch.manual_seed(0)
    pool = HistoryAttentionPooling(dim=8, max_length=5)
    emb = torch.randn(2, 5, 8)
    ids = torch.tensor([[4, 2, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = pool(emb, ids)
    garbage = emb.clone()
    garbage[0, 2:] = 100.0  # padded positions' embeddings must not matter
    assert torch.allclose(pool(garbage, ids), out)
    assert torch.all(out[1] == 0)


def test_history_attention_is_its_definition_and_trains():
    """softmax_j(v . tanh(W [e_j + p_j] + b)) over the non-padding slots, weights applied to e_j; the
    pooling's rearranged form equals it and passes gradients to every weight."""
    torch.manual_seed(1)
    pool = HistoryAttentionPooling(dim=8, max_length=6)
    emb = torch.randn(3, 6, 8, requires_grad=True)
    ids = torch.tensor([[4, 2, 7, 1, 3, 5], [9, 0, 3, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    keys = emb + pool.position.weight.unsqueeze(0)
    logits = (
        torch.tanh(keys @ pool.project.weight.t() + pool.project.bias) @ pool.score.weight[0]
    ).masked_fill(ids == 0, float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
    expected = (weights.unsqueeze(-1) * emb).sum(1)
    out = pool(emb, ids)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    out.sum().backward()
    for name, parameter in pool.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pooling, heads", [("attention", 1), ("attention", 2), ("mean", 1)])
def test_the_user_tower_pools_each_distinct_history_item_once_with_the_straightforward_result(pooling, heads):
    """The tower looks up and projects each distinct item of a batch's histories once and gathers per slot;
    pooling every slot's own embedding gives the same vectors and the same gradients."""
    torch.manual_seed(2)
    spec = TwoTowerSpec(
        num_users=5, num_genders=2, num_ages=3, num_occupations=3, num_zips=3, num_items=12, num_genres=3,
        num_years=3, num_title_words=9, history_length=6, embedding_dim=8, hidden_dim=8,
        history_pooling=pooling, history_heads=heads,
    )  # fmt: skip
    tower = TwoTowerModel(spec, sparse_ids=False).user_tower
    history = torch.tensor([[4, 2, 4, 11, 0, 0], [2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0]])
    pooled = tower.pool_history(history)
    pooled.square().sum().backward()
    fast = {name: p.grad.clone() for name, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad()
    embedded = torch.nn.functional.embedding(history, tower.item_embedding.weight, padding_idx=0)
    expected = masked_mean(embedded, history) if tower.pooling is None else tower.pooling(embedded, history)
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-5)
    expected.square().sum().backward()
    assert fast.keys() == {name for name, p in tower.named_parameters() if p.grad is not None}
    for name, p in tower.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_history_before_holds_only_earlier_interactions_most_recent_first():
    users = np.array([1, 1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 13, 20, 21])
    times = np.array([4, 1, 2, 3, 5, 6])  # user 1's order in time: 11, 12, 13, 10
    seq = InteractionSequences(users, items, times)
    assert seq.item.tolist() == [11, 12, 13, 10, 20, 21]
    hist = seq.history_before(np.arange(6), 3)
    assert hist.tolist() == [[0, 0, 0], [11, 0, 0], [12, 11, 0], [13, 12, 11], [0, 0, 0], [20, 0, 0]]
    gapped = seq.history_before(np.array([3]), 3, gap=np.array([1]))
    assert gapped.tolist() == [[12, 11, 0]]  # ends one interaction before the target's own
    assert seq.latest_history(np.array([1, 2, 3]), 2).tolist() == [[10, 13], [21, 20], [0, 0]]


@pytest.fixture(scope="module")
def trained():
    """A two-tower model on seeded synthetic data where taste follows topics, and topics fix genres."""
    data = generate(num_users=400, num_items=600, num_interactions=30_000, seed=3)
    schema = FeatureSchema.fit(data.users, data.items, max_genres=4, title_length=6)
    users, items = schema.user_table(data.users), schema.item_table(data.items)
    inter = data.interactions
    seq = InteractionSequences(
        schema.user_index(inter["user_id"]),
        schema.item_index(inter["item_id"]),
        inter["timestamp"].to_numpy(),
    )
    config = RecallConfig(
        epochs=4, batch_size=256, uniform_negatives=128, item_id_dropout=0.3, full_softmax_max_items=0
    )
    result = train_two_tower(config, schema, users, items, seq, seed=7, history_length=10, progress=False)
    return data, schema, users, items, seq, result


def test_training_is_seeded_and_reproducible(trained):
    _, schema, users, items, seq, _ = trained
    config = RecallConfig(epochs=1, batch_size=256, uniform_negatives=64)
    a = train_two_tower(config, schema, users, items, seq, seed=11, history_length=10, progress=False)
    b = train_two_tower(config, schema, users, items, seq, seed=11, history_length=10, progress=False)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_step_touches_only_the_id_rows_of_its_batch_and_dense_ids_are_the_other_choice(trained):
    """Sparse id gradients with lazy Adam: one step leaves every item row it did not see exactly as it was,
    so a step costs the batch, not the catalogue. Dense ones (plain Adam) train too."""
    _, schema, users, items, seq, _ = trained
    config = RecallConfig(
        epochs=1, batch_size=64, uniform_negatives=0, max_steps_per_epoch=1, full_softmax_max_items=0
    )
    start = train_two_tower(config, schema, users, items, seq, seed=5, history_length=10, progress=False)
    assert start.model.sparse_parameters()
    before = start.model.item_embedding.weight.detach().clone()
    after = train_two_tower(
        config, schema, users, items, seq, seed=5, history_length=10, progress=False, initial=start.model
    )
    assert torch.equal(start.model.item_embedding.weight, before)  # the initial model is not changed
    changed = (after.model.item_embedding.weight != before).any(dim=1).numpy()
    # the step's rows come from the seed's permutation, its history gaps from the process's own stream
    order = np.random.default_rng(5).permutation(len(seq))[:64]
    gaps = np.random.default_rng([5, 0]).integers(0, config.history_gap_max + 1, size=64)
    history = seq.history_before(order, 10, gaps)
    touched = np.zeros(schema.num_items, dtype=bool)
    touched[seq.item[order]] = True
    touched[history.ravel()] = True
    touched[0] = False  # padding
    assert changed.any() and not (changed & ~touched).any()
    dense = train_two_tower(
        config, schema, users, items, seq, seed=5, history_length=10, progress=False, sparse_ids=False
    )
    assert dense.model.sparse_parameters() == [] and np.isfinite(dense.final_loss)
    # dense Adam with weight decay moves every row at every step
    assert (dense.model.item_embedding.weight[1:] != start.model.item_embedding.weight[1:]).any(dim=1).all()


def test_a_full_softmax_over_a_small_catalogue_recalls_held_out_items_as_sampled_negatives_do():
    """Every item a negative of every example (the default up to full_softmax_max_items) against in-batch
    and uniform samples with log-Q correction: both learn, and the full softmax is no worse."""
    data, schema, split, seq = held_out_problem()
    users, items = schema.user_table(data.users), schema.item_table(data.items)
    recalls = {}
    for full in (True, False):
        config = RecallConfig(
            epochs=4, batch_size=256, uniform_negatives=128, full_softmax_max_items=10_000 if full else 0
        )
        model = train_two_tower(
            config, schema, users, items, seq, seed=3, history_length=HISTORY, progress=False
        ).model
        recalls[full] = held_out_recall(model, schema, data, split, seq)
    chance = 50 / (schema.num_items - 1)
    assert recalls[False] > 2 * chance
    assert recalls[True] > 0.9 * recalls[False], recalls


def test_early_stopping_keeps_the_best_epoch(trained):
    _, schema, users, items, seq, _ = trained
    scores = iter([0.3, 0.5, 0.4, 0.45, 0.2, 0.9])
    config = RecallConfig(epochs=6, batch_size=512, uniform_negatives=0, early_stopping_patience=2)
    result = train_two_tower(
        config,
        schema,
        users,
        items,
        seq,
        seed=1,
        history_length=5,
        validate=lambda m: next(scores),
        progress=False,
    )
    assert result.best_epoch == 2 and result.epochs == 4 and result.validation == [0.3, 0.5, 0.4, 0.45]


def test_model_roundtrips_through_safetensors(tmp_path, trained):
    *_, result = trained
    result.model.save(tmp_path, prefix="x_")
    again = TwoTowerModel.load(tmp_path, prefix="x_")
    assert again.item_tower.item_embedding is again.user_tower.item_embedding  # still one shared table
    for (name, x), (_, y) in zip(result.model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(x, y), name


def _encoder_matches_the_tower(model: TwoTowerModel, fields: np.ndarray, history: np.ndarray) -> None:
    """fields (N, 5) user/gender/age/occupation/zip indices, history (N, L): the numpy encoder, one user at
    a time, against the tower's batched forward."""
    encoder = UserQueryEncoder.from_tower(model.user_tower)
    with torch.no_grad():
        expected = model.user_tower(*torch.from_numpy(fields).T, torch.from_numpy(history)).numpy()
    served = np.stack([encoder(*map(int, f), h) for f, h in zip(fields, history)])
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=2e-6, rtol=1e-5)


def test_the_numpy_user_query_encoder_equals_the_trained_tower(trained):
    """Full, padded, gapped and empty histories: the padding slot between items keeps the later items'
    recency positions, as in the tower."""
    _, schema, users, *_, result = trained
    rows = np.arange(1, 9)
    names = ("user", "gender", "age", "occupation", "zip")
    fields = np.stack([getattr(users, name)[rows] for name in names], axis=1).astype(np.int64)
    length = result.model.spec.history_length
    history = np.random.default_rng(5).integers(1, schema.num_items, (8, length))
    history[2, 3:] = 0
    history[4, 1] = 0  # a gap: later items keep their slots
    history[5] = 0
    fields[6, 0] = 0  # the unknown-user row
    _encoder_matches_the_tower(result.model, fields, history)
    encoder = UserQueryEncoder.from_tower(result.model.user_tower)
    shorter = encoder(*map(int, fields[0]), history[0, :3])  # fewer slots than the tower's length
    with torch.no_grad():
        padded = np.pad(history[0, :3], (0, length - 3))
        expected = result.model.user_tower(*torch.from_numpy(fields[:1]).T, torch.from_numpy(padded[None]))
    np.testing.assert_allclose(shorter, expected.numpy()[0], atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="history"):
        encoder(*map(int, fields[0]), np.ones(length + 1, dtype=np.int64))


@pytest.mark.parametrize("pooling, heads", [("mean", 1), ("attention", 3)])
def test_the_numpy_user_query_encoder_equals_an_untrained_tower_of_each_pooling(pooling, heads):
    torch.manual_seed(3)
    spec = TwoTowerSpec(
        num_users=20,
        num_genders=3,
        num_ages=8,
        num_occupations=5,
        num_zips=7,
        num_items=40,
        num_genres=6,
        num_years=4,
        num_title_words=10,
        history_length=6,
        embedding_dim=8,
        hidden_dim=12,
        history_pooling=pooling,
        history_heads=heads,
    )
    model = TwoTowerModel(spec).eval()
    rng = np.random.default_rng(6)
    fields = np.stack([rng.integers(0, n, 5) for n in (20, 3, 8, 5, 7)], axis=1).astype(np.int64)
    history = rng.integers(1, 40, (5, 6))
    history[1, 2:] = 0
    history[3] = 0
    _encoder_matches_the_tower(model, fields, history)


def test_a_new_item_embedded_from_content_has_neighbours_of_its_genres(trained):
    _, schema, _, items, _, result = trained
    cold = embed_items(result.model, items, known=np.zeros(schema.num_items, dtype=bool))  # ids hidden
    warm = embed_items(result.model, items)
    rng = np.random.default_rng(0)
    probes = rng.choice(np.arange(1, schema.num_items), size=100, replace=False)
    first_genre = items.genres[:, 0]
    same, chance = [], []
    for item in probes:
        scores = warm @ cold[item - 1]
        scores[item - 1] = -np.inf
        neighbours = np.argsort(-scores)[:10] + 1
        same.append(np.mean(first_genre[neighbours] == first_genre[item]))
        chance.append(np.mean(first_genre[1:] == first_genre[item]))
    assert np.mean(same) > 2 * np.mean(chance)


def test_a_new_user_embedded_from_demographics_alone_beats_chance(trained):
    _, schema, users, items, seq, result = trained
    emb = embed_items(result.model, items)
    rows = np.arange(1, schema.num_users)
    hidden = users.__class__(
        **{f: getattr(users, f).copy() for f in ("user", "gender", "age", "occupation", "zip")}
    )
    hidden.user[:] = 0  # every user as a stranger: demographics only, no id, no history
    queries = embed_users(result.model, hidden, rows, np.zeros((len(rows), 10), dtype=np.int64))
    top = np.argsort(-(queries @ emb.T), axis=1)[:, :50] + 1
    taken = [set(seq.item[seq.user == r].tolist()) for r in rows]
    hit = np.mean(
        [len(taken[i] & set(top[i].tolist())) / len(taken[i]) for i in range(len(rows)) if taken[i]]
    )
    share_random = 50 / (schema.num_items - 1)
    assert hit > 1.3 * share_random  # topic priors depend on demographics: better than random items
