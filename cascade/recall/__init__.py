"""Recall stage: the two-tower model and its training, the FAISS index, the other channels and the candidate
generator they share, baselines, the user tower's serving form, and the recall and index artifacts' files."""
