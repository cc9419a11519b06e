"""Generate docs/configuration.md from the settings classes (``make docs``).

The test suite checks the file is current, so a new setting cannot go undocumented.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

SETTINGS_CLASSES = [
    ("Shared by every service", "cormorant.common.settings:CommonSettings"),
    ("Local stack (`cormorant up`)", "cormorant.devstack.stack:StackSettings"),
    ("Worker (model server of each replica)", "cormorant.worker.settings:WorkerSettings"),
    ("Gateway", "cormorant.gateway.settings:GatewaySettings"),
    ("Deployer", "cormorant.deployer.settings:DeployerSettings"),
    ("Fleet (runs the replicas)", "cormorant.fleet.settings:FleetSettings"),
    ("Prediction log", "cormorant.predictlog.settings:PredictLogSettings"),
    ("Feedback and datasets", "cormorant.feedback.settings:FeedbackSettings"),
    ("Alerts", "cormorant.alerts.settings:AlertsSettings"),
    ("Batch jobs", "cormorant.batch.settings:BatchSettings"),
    ("Kafka bridge", "cormorant.kafka_bridge.settings:KafkaBridgeSettings"),
    ("Test fixtures", "cormorant.devstack.testing.plugin:ExternalServers"),
]

HEADER = """# Configuration

Every setting is read from the environment by one `pydantic-settings` class per service (prefix
`CORMORANT_`); defaults serve the local stack. Settings shared by every service keep one name
(`CORMORANT_NATS_URL`) whatever the service. This page is generated from the classes by
`make docs`; a test fails when it is out of date.
"""


def _load(path: str) -> type[BaseSettings]:
    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseSettings)
    return cls


def _env_name(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        names = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
        if names:
            return names[0]
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + field).upper()


def _nested(annotation: object) -> type[BaseSettings] | None:
    """The settings class of a field that is one (read with its own prefix), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
        return annotation
    return None


def _rows(cls: type[BaseSettings], skip: set[str]) -> list[str]:
    """One table row per variable of ``cls``; a nested settings class gives its own rows."""
    rows = []
    for field, info in cls.model_fields.items():
        if field in skip and _env_name(cls, field) == f"CORMORANT_{field.upper()}":
            continue
        nested = _nested(info.annotation)
        if nested is not None:
            rows.extend(_rows(nested, set()))
            continue
        default = info.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{default}`"
        doc = (info.description or "").replace("\n", " ")
        rows.append(f"| `{_env_name(cls, field)}` | {shown} | {doc} |")
    return rows


def render() -> str:
    """The whole configuration page."""
    out = [HEADER]
    shared = set(_load(SETTINGS_CLASSES[0][1]).model_fields)
    for i, (title, path) in enumerate(SETTINGS_CLASSES):
        cls = _load(path)
        rows = _rows(cls, shared if i > 0 else set())
        out.append(f"\n## {title}\n\n`{path.replace(':', '.')}`\n")
        out.append("| variable | default | meaning |\n|---|---|---|")
        out.extend(rows)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/configuration.md")
    target.write_text(render())
    print(f"wrote {target}")
