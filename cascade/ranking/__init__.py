"""Ranking stage: features over recall candidates, the rankers and their training."""
