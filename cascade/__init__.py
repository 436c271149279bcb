"""Cascade: a recall -> rank -> rerank recommendation service over gRPC, in one import root whose layers
import one way (core -> data -> recall / ranking / rerank -> config -> serving -> training -> bench -> cli;
README.md draws the house)."""

__version__ = "0.1.0"
