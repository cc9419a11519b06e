"""The replica fleet: where replicas run, how they are kept at their count and autoscaled."""
