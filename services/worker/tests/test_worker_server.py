"""Server settings (``--server KEY=VALUE``) and the command line, checked before any fork."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cormorant.worker.cli import parse_settings
from cormorant.worker.server import (
    DEFAULT_TIMEOUT,
    WORKER_CLASS,
    InvalidServerSetting,
    default_workers,
    resolve_server_config,
)


def test_defaults_are_one_worker_per_cpu_and_a_long_timeout() -> None:
    """workers defaults to the CPU count and timeout to 1800 s; the port flag sets bind."""
    config = resolve_server_config({}, host="127.0.0.1", port=8123)
    assert config.workers == default_workers()
    assert config.timeout == DEFAULT_TIMEOUT == 1800
    assert config.threads == 1
    assert config.options["bind"] == ["127.0.0.1:8123"]
    assert config.options["worker_class"] == WORKER_CLASS


def test_given_settings_are_parsed_by_gunicorn() -> None:
    """Values are parsed with gunicorn's own validators (numbers, booleans)."""
    config = resolve_server_config(
        {"workers": "3", "threads": "4", "timeout": "60", "reuse-port": "true"},
        host="::1",
        port=9000,
    )
    assert (config.workers, config.threads, config.timeout) == (3, 4, 60)
    assert config.options["reuse_port"] == "true"
    assert config.options["bind"] == ["[::1]:9000"]


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("bind", "the --port and --host flags own the listening address"),
        ("worker_class", "a replica always runs uvicorn workers"),
        ("preload_app", "imported in each worker process"),
        ("raw_env", "use --env KEY=VALUE"),
        ("print_config", "command-line-only flag"),
        ("post_fork", "takes a Python object"),
    ],
)
def test_owned_and_flag_only_settings_are_refused(key: str, fragment: str) -> None:
    """Settings the replica owns or that are not KEY=VALUE settings are refused, by name."""
    with pytest.raises(InvalidServerSetting, match=f"server setting '{key}'") as caught:
        resolve_server_config({key: "x"}, host="127.0.0.1", port=1)
    assert fragment in caught.value.message
    assert caught.value.status_code == 400


def test_unknown_setting_suggests_the_close_one() -> None:
    """A misspelt setting is named with the setting it probably meant."""
    with pytest.raises(InvalidServerSetting, match="did you mean 'threads'"):
        resolve_server_config({"thread": "2"}, host="127.0.0.1", port=1)


def test_invalid_value_is_refused_with_gunicorns_reason() -> None:
    """A value gunicorn cannot parse is refused, naming the setting and the value."""
    with pytest.raises(InvalidServerSetting, match="server setting 'workers': invalid value '-2'"):
        resolve_server_config({"workers": "-2"}, host="127.0.0.1", port=1)


def test_command_line_builds_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags become WorkerSettings; --server and --env pairs merge over the environment."""
    monkeypatch.setenv("CORMORANT_WORKER_SERVER", '{"timeout": "90", "threads": "2"}')
    settings = parse_settings(
        [
            "--source", str(tmp_path), "--file", "m.py", "--function", "run",
            "--preprocess-function", "prep", "--accepts-file", "--endpoint", "churn",
            "--version", "3", "--port", "8001", "--server", "threads=4",
            "--env", "A=1", "--env", "B=x=y",
        ]
    )  # fmt: skip
    assert settings.source == tmp_path.resolve()
    assert (settings.file, settings.function, settings.preprocess_function) == (
        "m.py",
        "run",
        "prep",
    )
    assert settings.accepts_file is True
    assert (settings.endpoint, settings.version, settings.port) == ("churn", "3", 8001)
    assert settings.server == {"timeout": "90", "threads": "4"}
    assert settings.env == {"A": "1", "B": "x=y"}
    assert "A" not in os.environ


def test_malformed_pair_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--env without '=' stops with a usage error naming the flag."""
    with pytest.raises(SystemExit) as caught:
        parse_settings(["--env", "NOVALUE"])
    assert caught.value.code == 2
    assert "--env expects KEY=VALUE, got 'NOVALUE'" in capsys.readouterr().err


def test_check_validates_without_serving(capsys: pytest.CaptureFixture[str]) -> None:
    """`--check` answers 0 for a servable configuration and 2 with the reason otherwise."""
    from cormorant.worker.cli import main

    source = str(Path(__file__).resolve().parents[3] / "examples" / "multi_args")
    base = ["--check", "--source", source, "--file", "predict.py", "--port", "0"]
    assert main([*base, "--server", "threads=2"]) == 0
    assert main([*base, "--server", "bind=0.0.0.0:80"]) == 2
    assert "bind" in capsys.readouterr().err
    assert main(["--check", "--source", source, "--file", "my-model.py", "--port", "0"]) == 2
    assert "my-model.py" in capsys.readouterr().err
