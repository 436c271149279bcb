"""Generated gRPC code for proto/recommender.proto (regenerate with `make proto`)."""
