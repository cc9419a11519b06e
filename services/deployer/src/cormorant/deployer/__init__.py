"""Endpoints, model versions, traffic, replicas and autoscaling, batch jobs, flows."""
