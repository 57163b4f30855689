"""Local worker processes (`workers: 2`): both CPU cores without a launcher and without threads.

Two one-thread processes beat one two-thread process on a CPU box: small matrix products in one
process wait on each other's threads, which is ruinous when anything else runs on the machine.
Workers are ordinary ranks of the study (see runner): each takes work units as it comes free and
appends to its own point file; the calling process is rank 0 and merges. A worker whose parent
has died stops before its next point, so a killed study leaves no orphan computing on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..runconfig import as_dict, build
from .config import StudyConfig

WORKER_ENV = "STEERFT_STUDY_WORKER"


def spawn(config: StudyConfig, world: int) -> list[subprocess.Popen]:
    """Start ranks 1..world-1 of `config`'s study as child processes (rank 0 is the caller)."""
    procs = []
    for rank in range(1, world):
        assignment = {"rank": rank, "world": world, "parent": os.getpid(), "config": as_dict(config)}
        procs.append(subprocess.Popen([sys.executable, "-m", "steerft.jobs.study"],
                                      env={**os.environ, WORKER_ENV: json.dumps(assignment)}))
    return procs


def assignment() -> tuple[int, int] | None:
    """(rank, world) when this process is a worker, else None."""
    raw = os.environ.get(WORKER_ENV)
    if raw is None:
        return None
    info = json.loads(raw)
    return info["rank"], info["world"]


def orphaned() -> bool:
    """A worker whose parent study has exited."""
    raw = os.environ.get(WORKER_ENV)
    return raw is not None and os.getppid() != json.loads(raw)["parent"]


def check(procs: list[subprocess.Popen]) -> None:
    """Fail rank 0's wait as soon as a worker fails."""
    for rank, proc in enumerate(procs, start=1):
        if proc.poll() not in (None, 0):
            raise RuntimeError(f"study worker rank {rank} exited with code {proc.returncode}; see its output above. "
                               "Rerun the same command to resume.")


def stop(procs: list[subprocess.Popen]) -> None:
    """Wait for finished workers; end the ones still running (the study is over or failing)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()


def worker_config() -> StudyConfig:
    """The study config a spawned worker was started with."""
    return build(StudyConfig, json.loads(os.environ[WORKER_ENV])["config"], where="study worker")
