"""Customers: value from recency, frequency and monetary scores, and the tiers built on it."""
