"""Rerank stage: business rules applied to the ranked list."""
