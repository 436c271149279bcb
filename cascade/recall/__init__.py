"""Recall stage: two-tower model, its training task, the FAISS index and popularity."""
