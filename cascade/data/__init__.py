"""Data loading, synthetic generation and the evaluation split."""

from cascade.data.dataset import Dataset

__all__ = ["Dataset"]
