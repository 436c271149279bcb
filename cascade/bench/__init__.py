"""Benchmark harness: the load generator and in-process stage timing of `cascade bench serve|stages`, and
the index and ranking micro-benchmarks. Scenarios and results live in the repository's benchmarks/."""
