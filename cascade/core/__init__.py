"""The bottom floor: what every layer shares and nothing of Cascade's own above it. Config bases, errors
that know their gRPC status, the artifact store, metrics, seeding, array and sparse helpers, and the feature
schema that training and serving encode with."""
