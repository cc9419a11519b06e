"""Where replicas run: the ``Runtime`` seam and the values that cross it.

``local`` runs each replica as a worker process on this machine (``runtime/local.py``); a
``kubernetes`` runtime will run pods behind the same protocol.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """What a stream-endpoint replica (``python -m cormorant.kafka_bridge``) adds to a launch."""

    bootstrap_servers: str
    input_topics: tuple[str, ...]
    output_topic: str
    group: str
    dlq_topic: str | None = None
    security: Mapping[str, str] = field(default_factory=dict)
    """Passed in the replica's environment, never on its command line (``ps`` shows that)."""
    endpoint_id: str | None = None
    """The endpoint's database id, tagging logged predictions (the slug resolves it too)."""

    def args(self) -> list[str]:
        """The bridge's Kafka flags."""
        args = ["--bootstrap-servers", self.bootstrap_servers]
        for topic in self.input_topics:
            args += ["--input-topic", topic]
        args += ["--output-topic", self.output_topic, "--group", self.group]
        if self.dlq_topic:
            args += ["--dlq-topic", self.dlq_topic]
        return args

    def environment(self) -> dict[str, str]:
        """Variables the bridge reads its secrets (and the endpoint id) from."""
        env = {}
        if self.security:
            env["CORMORANT_KAFKA_BRIDGE_SECURITY"] = json.dumps(dict(self.security))
        if self.endpoint_id:
            env["CORMORANT_KAFKA_BRIDGE_ENDPOINT_ID"] = self.endpoint_id
        return env


@dataclass(frozen=True, slots=True)
class ReplicaLaunch:
    """Everything a runtime needs to start one replica of one model version."""

    replica_id: str
    endpoint: str
    version: str
    source: Path
    """The extracted snapshot the replica serves."""
    file: str
    function: str
    preprocess_file: str | None = None
    preprocess_function: str | None = None
    accepts_file: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    server: Mapping[str, str] = field(default_factory=dict)
    bridge: BridgeOptions | None = None
    """Set for a stream endpoint: the replica is a kafka-bridge, not a worker."""
    timeout_s: float | None = None
    """The endpoint's per-request deadline, past which the worker running a call is replaced."""
    resources: Mapping[str, int] = field(default_factory=dict)
    """The endpoint's ``resources`` (``memory_mb``, ``max_processes``, ``open_files``)."""

    def worker_settings(self) -> dict[str, str]:
        """The deadline and limits as the worker's ``CORMORANT_WORKER_*`` variables."""
        env = {f"CORMORANT_WORKER_{key.upper()}": str(value)
               for key, value in self.resources.items()}  # fmt: skip
        if self.timeout_s is not None:
            # Just ahead of the gateway's own deadline: the 504 is the replica's, and its
            # worker is already being replaced when the client's next request arrives.
            deadline = max(self.timeout_s * 0.9, self.timeout_s - 0.5)
            env["CORMORANT_WORKER_REQUEST_TIMEOUT_S"] = f"{deadline:g}"
        return env

    def bridge_args(self) -> list[str]:
        """The kafka-bridge's flags for this replica, without the metrics address."""
        assert self.bridge is not None
        args = ["--source", str(self.source), "--file", self.file, "--function", self.function]
        if self.preprocess_file is not None:
            args += ["--preprocess-file", self.preprocess_file]
        if self.preprocess_function is not None:
            args += ["--preprocess-function", self.preprocess_function]
        if self.accepts_file:
            args.append("--accepts-file")
        args += ["--endpoint", self.endpoint, "--version", self.version, *self.bridge.args()]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        return args

    def worker_args(self) -> list[str]:
        """The worker's flags for this replica, without the listening address."""
        args = ["--source", str(self.source), "--file", self.file, "--function", self.function]
        if self.preprocess_file is not None:
            args += ["--preprocess-file", self.preprocess_file]
        if self.preprocess_function is not None:
            args += ["--preprocess-function", self.preprocess_function]
        if self.accepts_file:
            args.append("--accepts-file")
        args += ["--endpoint", self.endpoint, "--version", self.version]
        for key, value in self.server.items():
            args += ["--server", f"{key}={value}"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        return args

    def graceful_timeout(self) -> float | None:
        """The worker's ``graceful_timeout`` server setting, if one is given."""
        for key, value in self.server.items():
            if key.strip().lower().replace("-", "_") == "graceful_timeout":
                try:
                    return float(value)
                except ValueError:
                    return None
        return None


@dataclass(slots=True)
class ReplicaHandle:
    """A started (or adopted) replica: where it answers and how the runtime finds it again."""

    replica_id: str
    url: str
    host: str
    pid: int | None = None
    adopted: bool = False
    identity: str | None = None
    """The name its ``/healthz`` must answer with (``web.REPLICA_HEADER``), when the runtime
    gave it one: on a shared machine its port may be another process's by the time it is
    probed."""


REFUSED_EXIT_CODE = 2
"""The worker's exit code for a configuration it refuses; the reason is its last stderr line."""

_REFUSAL_MARK = "error: "


def refusal_reason(output: str) -> str:
    """The worker's reason for refusing a configuration, from the end of its output."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        _, mark, reason = line.partition(_REFUSAL_MARK)
        if mark:
            return reason.strip()
    return lines[-1].strip() if lines else "the worker refused the configuration"


@dataclass(frozen=True, slots=True)
class Exit:
    """A replica that is gone: its exit code when known, and the end of its log."""

    code: int | None
    log_tail: str

    @property
    def refused(self) -> bool:
        """The worker exited because it refuses its configuration: no restart will help."""
        return self.code == REFUSED_EXIT_CODE

    def describe(self) -> str:
        """``exited with code 1`` / ``killed by SIGKILL`` / ``exited``."""
        if self.code is None:
            return "exited"
        if self.code < 0:
            try:
                return f"killed by {signal.Signals(-self.code).name}"
            except ValueError:
                return f"killed by signal {-self.code}"
        return f"exited with code {self.code}"


@dataclass(frozen=True, slots=True)
class WorkerDeath:
    """One worker process of a replica that died and was replaced (the replica kept serving)."""

    pid: int | None
    cause: str
    """``timeout``, ``oom``, ``exit``, ``killed`` or ``signal``."""
    detail: str


class ConfigurationRefused(Exception):
    """The worker refused a replica's configuration; the message is the worker's reason."""


class Runtime(Protocol):
    """Starts, watches and stops replicas somewhere."""

    async def check(self, launch: ReplicaLaunch) -> None:
        """Raise ``ConfigurationRefused`` if the worker would refuse ``launch``."""
        ...

    async def start(self, launch: ReplicaLaunch) -> ReplicaHandle:
        """Start a replica; it answers ``/healthz`` at the handle's url once it is ready."""
        ...

    async def adopt(
        self, launch: ReplicaLaunch, *, url: str, host: str | None, pid: int | None
    ) -> ReplicaHandle | None:
        """The handle of a replica started before this process, if it is still running."""
        ...

    async def exited(self, handle: ReplicaHandle) -> Exit | None:
        """How the replica ended, or None while it runs."""
        ...

    async def deaths(self, handle: ReplicaHandle) -> list[WorkerDeath]:
        """Worker deaths inside the replica since the last call."""
        ...

    async def stop(self, handle: ReplicaHandle, *, grace_s: float) -> Exit:
        """Ask the replica to finish in-flight work and stop; kill it after ``grace_s``."""
        ...

    async def kill(self, handle: ReplicaHandle) -> None:
        """Stop the replica and anything it started, at once."""
        ...
