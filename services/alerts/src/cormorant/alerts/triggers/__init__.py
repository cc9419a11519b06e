"""Continual-learning triggers: evaluate logged metrics, fire e-mail, webhook or flow actions.

``run_triggers`` starts the evaluator and the outbox for a replica and hands the API its
``Triggers``; ``router`` is the API.
"""

from cormorant.alerts.triggers.api import router
from cormorant.alerts.triggers.service import Triggers, run_triggers

__all__ = ["Triggers", "router", "run_triggers"]
