"""The ranking stage's config: what every ranker shares (the features, the training examples) and one
sub-config per ranker, chosen by its ``type`` in ``[ranking.model]``.

Configs written before the per-ranker split (flat ``[ranking]`` keys such as ``type``, ``epochs``,
``lgb_rounds``, ``din_item_dim``) still load: each old key moves to its place under ``ranking.model``, and a
key for a ranker other than the chosen one, which that ranker never read, is dropped with a warning naming
where it lives now.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from cascade.core.config import ComponentConfig

logger = logging.getLogger(__name__)

RankerType = Literal["lightgbm", "din", "wide_deep"]


class LightGBMConfig(ComponentConfig):
    """Gradient-boosted trees with a ranking objective over the engineered features."""

    type: Literal["lightgbm"] = Field("lightgbm", description="Selects this ranker.")
    rounds: int = Field(300, ge=1, description="Most boosting rounds (cross-validation picks the count).")
    learning_rate: float = Field(0.05, gt=0, description="Shrinkage.")
    num_leaves: int = Field(31, ge=2, description="Leaves per tree.")
    min_data_in_leaf: int = Field(50, ge=1, description="Smallest leaf.")
    objectives: tuple[Literal["lambdarank", "rank_xendcg"], ...] = Field(
        ("rank_xendcg",),
        min_length=1,
        description="Ranking objectives tried; the objective and round count with the best mean NDCG@10 "
        "over the cross-validation folds are kept. rank_xendcg beat lambdarank on MovieLens-100K; listing "
        "both doubles the training time.",
    )
    early_stopping_rounds: int = Field(
        50,
        ge=1,
        description="Cross-validation stops an objective once the folds' mean NDCG@10 has not improved for "
        "this many rounds.",
    )
    cv_folds: int = Field(
        3,
        ge=2,
        description="Folds of the training users that pick the objective and the round count (one held-out "
        "share of ~90 users picked them noisily on MovieLens-100K); the fold models score together, so "
        "more folds cost proportionally more training and scoring.",
    )


class TorchTrainingConfig(ComponentConfig):
    """The training loop every neural ranker shares: binary cross-entropy, Adam, best epoch on validation."""

    epochs: int = Field(6, ge=1, description="Most epochs; the best on validation GAUC is kept.")
    batch_size: int = Field(2048, ge=8, description="Candidates per training step.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="Adam weight decay of the dense weights; the user and item id tables train with lazy "
        "Adam, which has none.",
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout between MLP layers.")


class DINConfig(TorchTrainingConfig):
    """DIN: each candidate attends over the user's behaviour sequence (see ``cascade.ranking.din``)."""

    type: Literal["din"] = Field("din", description="Selects this ranker.")
    item_dim: int = Field(48, ge=2, description="Item-id embedding width of behaviours and candidates.")
    genre_dim: int = Field(16, ge=2, description="Genre embedding width; an item is [item, mean genre].")
    user_dim: int = Field(8, ge=2, description="Embedding width of each user-side categorical.")
    attention_hidden: tuple[int, ...] = Field(
        (36,), description="Hidden widths of the activation unit scoring each behaviour (paper: 36)."
    )
    attention_activation: Literal["prelu", "dice"] = Field(
        "prelu", description="Activation inside the activation unit."
    )
    hidden_dims: tuple[int, ...] = Field((200, 80), description="Widths of the final MLP (paper).")
    activation: Literal["prelu", "dice"] = Field("dice", description="Activation of the final MLP.")


class WideDeepConfig(TorchTrainingConfig):
    """Wide&Deep: cross-product features beside an MLP over embeddings (see ``cascade.ranking.wide_deep``)."""

    type: Literal["wide_deep"] = Field("wide_deep", description="Selects this ranker.")
    embedding_dim: int = Field(16, ge=2, description="Embedding width of each categorical feature.")
    hidden_dims: tuple[int, ...] = Field((128, 64), description="Widths of the deep MLP layers.")
    crosses: tuple[tuple[str, str], ...] = Field(
        (("gender", "genre"), ("age", "genre"), ("occupation", "genre"), ("history", "item")),
        description="Cross-product transformations of the wide part, as pairs of feature names; "
        "('history', 'item') crosses each recent item with the candidate.",
    )
    hash_buckets: int = Field(
        1_000_003,
        ge=1,
        description="A cross with more value pairs than this is hashed into this many weights (a prime, so "
        "that structured ids spread evenly).",
    )


RankerConfig = Annotated[LightGBMConfig | DINConfig | WideDeepConfig, Field(discriminator="type")]
RANKER_CONFIGS: dict[str, type[LightGBMConfig | DINConfig | WideDeepConfig]] = {
    "lightgbm": LightGBMConfig,
    "din": DINConfig,
    "wide_deep": WideDeepConfig,
}

# flat key of the config before the per-ranker split -> (rankers that read it, its key under ranking.model)
_NEURAL = ("din", "wide_deep")
LEGACY_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "epochs": (_NEURAL, "epochs"),
    "batch_size": (_NEURAL, "batch_size"),
    "learning_rate": (_NEURAL, "learning_rate"),
    "weight_decay": (_NEURAL, "weight_decay"),
    "dropout": (_NEURAL, "dropout"),
    "embedding_dim": (("wide_deep",), "embedding_dim"),
    "hidden_dims": (("wide_deep",), "hidden_dims"),
    "wide_crosses": (("wide_deep",), "crosses"),
    "wide_hash_buckets": (("wide_deep",), "hash_buckets"),
    "din_item_dim": (("din",), "item_dim"),
    "din_genre_dim": (("din",), "genre_dim"),
    "din_user_dim": (("din",), "user_dim"),
    "din_attention_hidden": (("din",), "attention_hidden"),
    "din_attention_activation": (("din",), "attention_activation"),
    "din_hidden_dims": (("din",), "hidden_dims"),
    "din_activation": (("din",), "activation"),
    "lgb_rounds": (("lightgbm",), "rounds"),
    "lgb_learning_rate": (("lightgbm",), "learning_rate"),
    "lgb_num_leaves": (("lightgbm",), "num_leaves"),
    "lgb_min_data_in_leaf": (("lightgbm",), "min_data_in_leaf"),
    "lgb_objectives": (("lightgbm",), "objectives"),
    "lgb_cv_folds": (("lightgbm",), "cv_folds"),
}


class RankingConfig(ComponentConfig):
    model: RankerConfig = Field(
        default_factory=LightGBMConfig,
        description="The ranker `train ranking` trains and the service serves, with its own settings: "
        "[ranking.model] with type = 'lightgbm' (ranks best on ML-100K), 'din' or 'wide_deep'.",
    )
    rating_models: tuple[Literal["pmf", "hybrid", "autorec"], ...] = Field(
        ("pmf", "hybrid", "autorec"),
        description="Rating models whose predicted rating of each candidate is a ranking feature, trained on "
        "the same window as the ranker's other features. I-AutoRec keeps a (items, 500) code table and "
        "trains over (users,)-wide item columns: leave it out for catalogues of millions.",
    )
    als_factors: int = Field(
        64,
        ge=0,
        description="Factors of the implicit ALS model whose score of each candidate, and that score's rank "
        "in the request, are ranking features (the user factor folded in from the request's history); "
        "trained on the same window as the other features. 0 turns the two features off.",
    )
    als_regularization: float = Field(0.1, ge=0, description="ALS features: L2 regularisation.")
    als_alpha: float = Field(
        10.0, gt=0, description="ALS features: confidence of an interaction (1 for the rest, as in implicit)."
    )
    als_iterations: int = Field(15, ge=1, description="ALS features: alternating sweeps.")
    validation_share: float = Field(
        0.1, gt=0, lt=1, description="Share of training users held out to pick epochs / rounds."
    )
    training_candidates: int = Field(
        300, ge=10, description="Two-tower candidates per user labelled for training the ranker."
    )
    max_training_users: int | None = Field(
        None,
        ge=10,
        description="Users (seeded sample) whose candidates train the ranker; unset uses every user with "
        "held-out positives. Bounds example count on very large data.",
    )
    recent_window_days: float = Field(
        7.0, gt=0, description="Window of the 'recent popularity' feature, before the request time."
    )
    threads: int = Field(2, ge=1, description="Threads for training (LightGBM, torch).")

    @property
    def type(self) -> RankerType:
        """The chosen ranker's name."""
        return self.model.type

    def with_ranker(self, ranker_type: str) -> RankingConfig:
        """This config with ``ranker_type`` as the ranker: its configured settings when it is the chosen one,
        else its defaults (`cascade evaluate ranking` trains every ranker on the same examples)."""
        if ranker_type not in RANKER_CONFIGS:
            raise ValueError(f"ranker type: must be one of {sorted(RANKER_CONFIGS)}, got {ranker_type!r}")
        if ranker_type == self.type:
            return self
        return self.model_copy(update={"model": RANKER_CONFIGS[ranker_type]()})

    @model_validator(mode="before")
    @classmethod
    def _move_flat_keys(cls, raw: Any) -> Any:
        """Old flat keys -> ``model``; see the module's docstring."""
        if not isinstance(raw, dict):
            return raw
        legacy = [key for key in raw if key == "type" or key in LEGACY_KEYS]
        if not legacy:
            return raw
        raw = dict(raw)
        if "model" in raw:
            key = legacy[0]
            new = "type" if key == "type" else LEGACY_KEYS[key][1]
            raise ValueError(f"ranking.{key}: now ranking.model.{new}; give it there, beside ranking.model")
        chosen = raw.pop("type", "lightgbm")
        model: dict[str, Any] = {"type": chosen}
        dropped = []
        for key in legacy:
            if key == "type":
                continue
            rankers, new = LEGACY_KEYS[key]
            value = raw.pop(key)
            if chosen in rankers:
                model[new] = value
            else:
                dropped.append(f"ranking.{key} (now ranking.model.{new} of {' and '.join(rankers)})")
        if dropped:
            logger.warning(
                "ranking.type is %r: ignoring %s, which only another ranker reads", chosen, ", ".join(dropped)
            )
        raw["model"] = model
        return raw
