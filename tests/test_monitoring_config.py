"""The shipped Grafana dashboards and Prometheus config chart metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _exported_metric_names() -> set[str]:
    names = set()
    for source in ROOT.glob("services/*/src/cormorant/**/*.py"):
        names.update(re.findall(r'"(cormorant_[a-z_]+)"', source.read_text()))
    for source in ROOT.glob("libs/common/src/cormorant/**/*.py"):
        names.update(re.findall(r'"(cormorant_[a-z_]+)"', source.read_text()))
    return names


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_dashboards_query_only_exported_metrics() -> None:
    """Every cormorant_* series a panel queries is defined by some service."""
    exported = _exported_metric_names()
    dashboards = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert len(dashboards) >= 2
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["panels"], path.name
        for panel in board["panels"]:
            for target in panel["targets"]:
                for name in re.findall(r"cormorant_[a-z_]+", target["expr"]):
                    assert _base(name) in exported, f"{path.name}: {panel['title']}: {name}"


def test_prometheus_config_scrapes_services_and_discovers_replicas() -> None:
    """The scrape config names every service port and the deployer's discovery route."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = {
        group["labels"]["service"] for group in jobs["cormorant-services"]["static_configs"]
    }
    assert services == {"gateway", "deployer", "fleet", "predictlog", "feedback", "alerts", "batch"}
    discovery = jobs["cormorant-replicas"]["http_sd_configs"][0]["url"]
    assert discovery.endswith("/internal/prometheus/targets")
