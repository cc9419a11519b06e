"""docs/configuration.md documents every setting of every service."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
