"""`captioner worker --gpus all`: one inference worker process per visible GPU, each pinned."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process to start: its node name and the environment it is pinned with."""

    name: str
    env: dict[str, str]


def visible_gpus(environ: Mapping[str, str] | None = None, smi: str | None = None) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ if environ is None else environ
    pinned = env.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        ids = [gpu.strip() for gpu in pinned.split(",") if gpu.strip()]
        return [] if ids in ([], ["-1"]) else ids
    smi = smi or shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def plan_workers(gpus: Sequence[str], name: str) -> list[WorkerProcess]:
    """One process per GPU, pinned with CUDA_VISIBLE_DEVICES; one unpinned CPU worker without."""
    base, _, host = name.partition("@")
    host = host or "%h"
    if not gpus:
        return [WorkerProcess(f"{base}@{host}", {})]
    return [WorkerProcess(f"{base}-gpu{gpu}@{host}", {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]


def supervise(plan: Sequence[WorkerProcess], argv: Sequence[str]) -> int:
    """Run one child per planned process; when one exits or we are stopped, stop them all."""
    children = [subprocess.Popen([*argv, "--name", p.name], env=os.environ | p.env) for p in plan]

    def stop(signum, _frame) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    exited = next(child.returncode for child in children if child.returncode is not None)
    stop(signal.SIGTERM, None)
    for child in children:
        child.wait()
    return exited
