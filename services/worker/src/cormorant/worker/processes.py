"""CPU, memory and open files of every process of a replica, each sample labelled by pid.

Each gunicorn worker has its own registry, so the process collector's figures describe
whichever worker answered the scrape. This collector, registered in every worker, reads the
whole replica instead: the gunicorn master and every process below it (the workers and
anything predict spawned). Whichever worker answers, the replica's totals are the sum, and
a reader that computes CPU % does so per pid, so a restarted worker never mixes processes.
Linux only (``/proc``); elsewhere it yields nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROC: Final = Path("/proc")
# A fork bomb in predict code must not make a scrape walk an unbounded tree.
MAX_PROCESSES: Final = 1024


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """One process's figures; ``None`` where ``/proc`` would not say."""

    pid: int
    cpu_seconds: float
    memory_bytes: float
    open_fds: float | None


def _children(pid: int) -> list[int]:
    # Every thread's list: predict threads may spawn processes too.
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def tree(root: int) -> list[int]:
    """``root`` and every live process below it, root first, at most ``MAX_PROCESSES``."""
    pids = [root]
    seen = {root}
    index = 0
    while index < len(pids) and len(pids) < MAX_PROCESSES:
        for child in _children(pids[index]):
            if child not in seen and len(pids) < MAX_PROCESSES:
                seen.add(child)
                pids.append(child)
        index += 1
    return pids


def read_process(pid: int) -> ProcessUsage | None:
    """The figures of ``pid`` from ``/proc``, or ``None`` once it has gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        memory = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    except (IndexError, ValueError, OSError):
        return None
    try:
        fds: float | None = len(os.listdir(PROC / str(pid) / "fd"))
    except OSError:
        fds = None
    return ProcessUsage(pid, cpu, float(memory), fds)


class ReplicaProcessCollector(Collector):
    """``cormorant_replica_process_*{pid}`` for the process tree rooted at ``root_pid``."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def collect(self) -> Iterator[Metric]:
        """One sample per live process of the replica, per figure."""
        cpu = CounterMetricFamily(
            "cormorant_replica_process_cpu_seconds",
            "CPU time (user + system) of each process of the replica since it started.",
            labels=["pid"],
        )
        memory = GaugeMetricFamily(
            "cormorant_replica_process_resident_memory_bytes",
            "Resident memory of each process of the replica (shared pages count in each).",
            labels=["pid"],
        )
        fds = GaugeMetricFamily(
            "cormorant_replica_process_open_fds",
            "Open file descriptors of each process of the replica.",
            labels=["pid"],
        )
        if PROC.joinpath("self", "stat").exists():
            for pid in tree(self.root_pid):
                usage = read_process(pid)
                if usage is None:
                    continue
                label = [str(pid)]
                cpu.add_metric(label, usage.cpu_seconds)
                memory.add_metric(label, usage.memory_bytes)
                if usage.open_fds is not None:
                    fds.add_metric(label, usage.open_fds)
        yield cpu
        yield memory
        yield fds


def register_replica_processes(registry: CollectorRegistry, root_pid: int) -> None:
    """Expose the replica's per-process figures on ``registry``."""
    registry.register(ReplicaProcessCollector(root_pid))
