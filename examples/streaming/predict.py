"""A generator: each chunk reaches the client as soon as it is yielded.

``predict("the quick brown fox", 0.1)`` yields one ``{"index": i, "token": word}`` per word,
``delay`` seconds apart, like a language model producing tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


def predict(text: str, delay: float = 0.05) -> Iterator[dict[str, Any]]:
    """The words of ``text``, one chunk each, ``delay`` seconds apart."""
    if not 0 <= delay <= 5:
        raise ValueError("delay must be between 0 and 5 seconds")
    for index, token in enumerate(text.split()):
        if index:
            time.sleep(delay)
        yield {"index": index, "token": token}
