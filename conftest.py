"""Root conftest: the real-server fixtures are available to every test in the repo."""

pytest_plugins = ["cormorant.devstack.testing.plugin"]
