"""A model that answers with its input: the cheapest prediction, for load on the platform."""


def predict(*values):
    """The input as given: one value, or the list of several."""
    return values[0] if len(values) == 1 else list(values)
