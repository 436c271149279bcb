"""Serving layer: the gRPC service and its server, the request pipeline, the models it loads from the
artifacts in their serving forms, the online feature store and a client. Imports no training code."""
