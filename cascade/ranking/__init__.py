"""Ranking stage: features over recall candidates, the rankers (LightGBM, DIN, Wide&Deep) and their
training, DIN's serving form, and the ranking artifact's files."""
