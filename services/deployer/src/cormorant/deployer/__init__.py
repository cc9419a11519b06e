"""Endpoints, model versions, traffic, replicas and autoscaling, batch capacity on demand."""
