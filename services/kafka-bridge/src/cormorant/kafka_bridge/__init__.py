"""The replica of a stream endpoint: consume, predict, produce, dead-letter."""
