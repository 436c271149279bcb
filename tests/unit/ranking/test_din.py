"""DIN: the split attention and the serving form against the straightforward form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.core.optim import adam_with_lazy_tables
from cascade.ranking.config import DINConfig, RankingConfig
from cascade.ranking.din import DIN, Dice
from cascade.ranking.din_serving import DINServing, activation_form
from cascade.ranking.features import (
    RankingBatch,
)
from cascade.ranking.torch_ranker import DINRanker
from tests.unit.ranking.batches import RandomItems, StubSchema, synthetic_batch


def _din(config: RankingConfig, items: RandomItems) -> DIN:
    ranker = DINRanker.create(config, StubSchema(), items)
    return ranker.model


def _trained_din(config: RankingConfig, items: RandomItems, rng: np.random.Generator, steps: int) -> DIN:
    """A DIN after a few training steps, so that Dice's running statistics and every weight are
    non-trivial; in eval mode."""
    model = _din(config, items)
    optimizers = adam_with_lazy_tables(model, 1e-2, 0.0)
    train = synthetic_batch(rng, 6, 40, 12, items)
    for _ in range(steps):
        loss = model(train.tensors()).square().mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    return model.eval()


def _din_config(**model) -> RankingConfig:
    return RankingConfig(model=DINConfig(**model))


@pytest.mark.parametrize("attention_hidden", [(36,), (64, 16)])
@pytest.mark.parametrize("activation_name", ["prelu", "dice"])
def test_din_split_attention_equals_the_straightforward_form(items, attention_hidden, activation_name):
    """DIN.forward, the form that trains and scores offline batches, against the concatenated reference,
    for one request and several, and with gradients reaching the attention's weights."""
    torch.manual_seed(0)
    config = _din_config(
        attention_hidden=attention_hidden, attention_activation=activation_name, activation=activation_name
    )
    rng = np.random.default_rng(1)
    model = _trained_din(config, items, rng, steps=3)
    with torch.inference_mode():
        for requests in (1, 5):
            batch = synthetic_batch(rng, requests, 50, 20, items).tensors()
            fast, slow = model(batch), model.reference_forward(batch)
            assert fast.shape == (requests * 50,)
            torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    batch = synthetic_batch(rng, 2, 50, 20, items).tensors()
    fast = model(batch)
    torch.testing.assert_close(fast, model.reference_forward(batch), atol=1e-5, rtol=1e-5)
    fast.sum().backward()
    assert model.attention.linears[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention_hidden", [(36,), (64, 16)])
@pytest.mark.parametrize(("attention_activation", "activation"), [("prelu", "dice"), ("dice", "prelu")])
def test_din_serving_form_equals_the_straightforward_form(
    items, attention_hidden, attention_activation, activation
):
    """DINServing (weights folded at build, numpy around torch's products; the PReLU fold with one
    attention layer, the batched layers otherwise) against the concatenated reference, on padded histories;
    in bfloat16 it stays close to float32. It takes one request, and float32 or bfloat16 only."""
    torch.manual_seed(0)
    config = _din_config(
        attention_hidden=attention_hidden, attention_activation=attention_activation, activation=activation
    )
    rng = np.random.default_rng(11)
    model = _trained_din(config, items, rng, steps=3)
    served = DINServing.build(model, "float32")
    for _ in range(3):
        batch = synthetic_batch(rng, 1, 50, 20, items)
        with torch.inference_mode():
            expected = model.reference_forward(batch.tensors()).numpy()
        logits = served(batch)
        assert logits.shape == (50,) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
    approx = DINServing.build(model, "bfloat16")(batch)
    assert not np.array_equal(approx, logits)  # the bf16 products did run
    np.testing.assert_allclose(approx, logits, atol=3e-2)
    with pytest.raises(ValueError, match="one request"):
        served(synthetic_batch(rng, 2, 5, 20, items))
    with pytest.raises(ValueError, match="precision"):
        DINServing.build(model, "float16")


def test_din_bfloat16_serving_form_keeps_the_float32_top_items(items):
    """The serving option ``ranker_precision = "bfloat16"`` at a served request's size: approximate, so
    checked against float32."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    model = _trained_din(_din_config(), items, rng, steps=5)
    batch = synthetic_batch(rng, 1, 500, 50, items)
    exact = torch.sigmoid(torch.from_numpy(DINServing.build(model, "float32")(batch)))
    approx = torch.sigmoid(torch.from_numpy(DINServing.build(model, "bfloat16")(batch)))
    assert not torch.equal(approx, exact)
    assert (approx - exact).abs().max() < 5e-3
    top_exact = set(torch.topk(exact, 20).indices.tolist())
    top_approx = set(torch.topk(approx, 20).indices.tolist())
    assert len(top_exact & top_approx) >= 18


def test_din_ranker_serving_form_scores_as_the_model_does(items):
    """The ranker's serving form gives the model's probabilities for one request, as its offline
    ``score`` does for any batch; a form built after new weights are loaded scores with those."""
    torch.manual_seed(0)
    config = _din_config()
    rng = np.random.default_rng(12)
    ranker = DINRanker(_trained_din(config, items, rng, steps=2), config)
    serve = ranker.serving_form("float32")
    batch = synthetic_batch(rng, 1, 40, 20, items)
    with torch.inference_mode():
        expected = torch.sigmoid(ranker.model.reference_forward(batch.tensors())).numpy()
    np.testing.assert_allclose(serve(batch), expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(ranker.score(batch), expected, atol=1e-6, rtol=1e-5)
    several = synthetic_batch(rng, 3, 40, 20, items)
    with torch.inference_mode():
        expected_several = torch.sigmoid(ranker.model.reference_forward(several.tensors())).numpy()
    np.testing.assert_allclose(ranker.score(several), expected_several, atol=1e-6, rtol=1e-5)
    other = _trained_din(config, items, np.random.default_rng(14), steps=4)
    ranker.model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        expected = torch.sigmoid(other.reference_forward(batch.tensors())).numpy()
    np.testing.assert_allclose(ranker.serving_form("float32")(batch), expected, atol=1e-6, rtol=1e-5)


def test_dice_is_the_papers_formula_in_training_and_serving_forms():
    """Dice in eval mode and its serving form (four in-place passes from per-unit terms) against
    f(x) = p x + (1 - p) alpha x, p = sigmoid((x - E) / sd), on the last axis and on axis 1."""
    torch.manual_seed(0)
    dice = Dice(12)
    dice.running_mean.normal_()
    dice.running_var.uniform_(0.5, 2.0)
    dice.slope.data.uniform_(-0.5, 0.5)
    dice.eval()
    for x, axis, shape in ((torch.randn(7, 12), 1, (1, 12)), (torch.randn(3, 12, 5), 1, (1, 12, 1))):
        mean, var = dice.running_mean.view(shape), dice.running_var.view(shape)
        p = torch.sigmoid((x - mean) / torch.sqrt(var + dice.eps))
        expected = p * x + (1 - p) * dice.slope.detach().view(shape) * x
        torch.testing.assert_close(dice(x, axis=axis), expected, atol=1e-6, rtol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(activation_form(dice, axis)(x.clone()), expected, atol=1e-6, rtol=1e-5)


def test_din_attention_ignores_padding_and_weights_are_not_normalised(items):
    torch.manual_seed(0)
    model = _din(_din_config(), items).eval()
    rng = np.random.default_rng(2)
    batch = synthetic_batch(rng, 1, 8, 10, items)
    short = batch.history.copy()
    short[0, 5:] = 0
    padded_other = short.copy()
    padded_other[0, 5:] = 0
    with torch.inference_mode():
        a = model(RankingBatch(**{**batch.__dict__, "history": short}).tensors())
        # padding positions hold 0 whatever the history length they pad to
        longer = np.zeros((1, 20), dtype=np.int64)
        longer[0, :10] = short[0]
        b = model(RankingBatch(**{**batch.__dict__, "history": longer}).tensors())
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    behaviours = model.item_vectors(torch.from_numpy(short))
    weights = model.attention(
        behaviours, model.item_vectors(torch.from_numpy(batch.item)), torch.zeros(8, dtype=torch.int64)
    )
    assert not torch.allclose(weights.sum(1), torch.ones(8))  # intensities, not a softmax
