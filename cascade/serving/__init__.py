"""Serving layer: gRPC service, client, online feature store, and the workflows composing the stages."""
