"""docs/configuration.md documents every setting of every service; shared settings are
read the same way by every service."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cormorant.deployer.settings import DeployerSettings
from cormorant.feedback.settings import FeedbackSettings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_is_current() -> None:
    """The page equals what the settings classes generate (run `make docs` to refresh it)."""
    spec = importlib.util.spec_from_file_location("configdoc", ROOT / "tools" / "configdoc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    assert (ROOT / "docs" / "configuration.md").read_text() == expected, "run `make docs`"
    for name in ("CORMORANT_NATS_URL", "CORMORANT_DATABASE_URL", "CORMORANT_GATEWAY_PORT"):
        assert name in expected


@pytest.mark.parametrize(
    "variable",
    [
        "CORMORANT_DATASETS_URL",
        "CORMORANT_DEPLOYER_DATASETS_URL",
        "CORMORANT_FEEDBACK_DATASETS_URL",
    ],
)
def test_the_deployer_and_feedback_read_datasets_from_one_storage(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One variable sets where both services keep dataset files; the per-service names that
    came before it still work, and set both."""
    monkeypatch.setenv(variable, "memory://datasets")
    monkeypatch.setenv("CORMORANT_FEEDBACK_DATASETS_STORAGE_OPTIONS", '{"anon": true}')
    for settings in (DeployerSettings(), FeedbackSettings()):
        assert settings.resolved_datasets_url() == "memory://datasets"
        assert settings.datasets_storage_options == {"anon": True}
