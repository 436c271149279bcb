"""The recall stage's config: the two-tower model and its training, the channels' quotas and rules, the
ANN index."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cascade.core.config import ComponentConfig


class RecallConfig(ComponentConfig):
    embedding_dim: int = Field(64, ge=4, le=1024, description="Output dimension of both towers.")
    hidden_dim: int = Field(128, ge=4, description="Width of each tower's hidden layer.")
    epochs: int = Field(
        20,
        ge=1,
        description="Most training epochs of the validation run; early stopping on validation Recall@100 "
        "usually ends it sooner (after 13 to 18 epochs on MovieLens-100K with the shipped cascade.toml).",
    )
    early_stopping_patience: int = Field(
        3, ge=1, description="Epochs without a better validation Recall@100 before training stops."
    )
    refit_epochs: int | None = Field(
        3,
        ge=1,
        description="How the served model is refitted on the whole training part once validation has picked "
        "the epoch count: unset trains it from scratch for that many epochs; a number starts it from the "
        "validation model's weights and trains this many epochs (cheaper; continues training as production "
        "refreshes do).",
    )
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Most optimiser steps per epoch, each on a fresh random batch of interactions; unset "
        "runs every interaction once. Bounds training time on very large data (the benchmark scenarios).",
    )
    batch_size: int = Field(
        1024, ge=8, description="Interactions per step; the rest of the batch are negatives."
    )
    uniform_negatives: int = Field(
        1024, ge=0, description="Items drawn uniformly from the catalogue per step as extra negatives."
    )
    full_softmax_max_items: int = Field(
        20_000,
        ge=0,
        description="Catalogues of at most this many items train with a full softmax: every item is a "
        "negative of every example (the item tower runs over the catalogue each step) instead of in-batch "
        "and uniform samples.",
    )
    history_gap_max: int = Field(
        20,
        ge=0,
        description="A training example's history ends up to this many interactions before its target, "
        "drawn uniformly, so the model learns to predict the next several items, as serving and evaluation "
        "ask, not only the very next one.",
    )
    history_pooling: Literal["mean", "attention"] = Field(
        "attention", description="How the user tower pools the item embeddings of the user's recent history."
    )
    history_heads: int = Field(
        1,
        ge=1,
        le=16,
        description='Attention heads pooling the history (``history_pooling = "attention"``): each pools '
        "the sequence its own way, so a user with several interests is not averaged into one.",
    )
    learning_rate: float = Field(1e-2, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(
        1e-6, ge=0, description="Adam weight decay of the dense layers (the id tables' lazy Adam has none)."
    )
    temperature: float = Field(0.07, gt=0, description="Softmax temperature over cosine similarities.")
    logq_correction: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Weight of the log-Q correction of sampled logits: 1 removes the sampling bias towards "
        "popular items fully, 0 keeps it (and with it a popularity prior).",
    )
    user_id_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of steps' users whose id is hidden, so the tower learns cold start.",
    )
    item_id_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of items whose id is hidden, so the item tower learns to embed from content.",
    )
    validation_users: int = Field(
        2000, ge=1, description="Users sampled for validation Recall@100 after each epoch (all when fewer)."
    )
    num_candidates: int = Field(
        300, ge=1, description="Quota of the two-tower ANN channel: candidates it hands to ranking."
    )
    cooccurrence_candidates: int = Field(
        50, ge=0, description="Quota of the item co-occurrence channel (from the user's recent items)."
    )
    segment_popular_candidates: int = Field(
        50, ge=0, description="Quota of the popular-in-segment channel, used for users with no history."
    )
    item_item_candidates: int = Field(
        100,
        ge=0,
        description="Quota of the item-item (EASE) channel, scored from everything the user has; 0 turns it "
        "off. Built only for catalogues of at most item_item_max_items.",
    )
    item_item_l2: float = Field(
        500.0, gt=0, description="EASE's L2 weight (picked on the validation split of MovieLens-100K)."
    )
    item_item_max_items: int = Field(
        5000,
        ge=0,
        description="Largest catalogue the item-item channel is built for: its (N, N) float32 matrix is held "
        "by every serving process (100 MB at 5,000 items) and a request costs O(items seen x N).",
    )
    cooccurrence_window: int = Field(
        10, ge=1, description="Two interactions at most this many apart in a user's history co-occur."
    )
    cooccurrence_min_support: int = Field(
        3, ge=1, description="A rule X -> Y needs X and Y to co-occur at least this many times."
    )
    cooccurrence_min_confidence: float = Field(
        0.05, ge=0, le=1, description="A rule X -> Y needs support(X, Y) / occurrences(X) at least this."
    )
    cooccurrence_neighbours: int = Field(50, ge=1, description="Rules kept per item X, strongest first.")
    cooccurrence_recent_items: int = Field(
        10, ge=1, description="How many of the user's most recent items feed the co-occurrence channel."
    )
    segment_popular_top: int = Field(500, ge=1, description="Items kept per gender x age segment.")
    index_factory: str = Field(
        "Flat", description="FAISS index factory string (Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16x8...)."
    )
    index_target_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="nprobe / efSearch are tuned at build time to the smallest value reaching this "
        "recall@num_candidates against exact search on held-out queries.",
    )
    index_min_recall: float = Field(
        0.95, ge=0, le=1, description="rebuild-index refuses to publish below this recall@k against exact."
    )
