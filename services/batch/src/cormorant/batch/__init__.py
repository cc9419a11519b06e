"""Batch jobs: a dataset's CSV through a batch endpoint's replicas, the output into a dataset."""
