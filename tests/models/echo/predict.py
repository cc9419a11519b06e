"""A test model that answers with its input, so every logged row can be matched to its request."""


def predict(value):
    """The input, unchanged."""
    return value
