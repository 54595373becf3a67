"""`captioner worker --gpus all`: which GPUs are visible and the processes planned for them."""

from __future__ import annotations

import pytest

from worker.gpus import plan_workers, visible_gpus


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [("0,1", ["0", "1"]), ("2", ["2"]), ("", []), ("-1", []), (" 3 , 1 ", ["3", "1"])],
)
def test_cuda_visible_devices_decides_when_set(pinned, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": pinned}) == expected


def test_nvidia_smi_lists_the_gpus(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    assert visible_gpus({}, smi=str(smi)) == ["0", "1", "2"]


def test_a_broken_nvidia_smi_means_no_gpus(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    assert visible_gpus({}, smi=str(smi)) == []


def test_one_pinned_process_per_gpu():
    plan = plan_workers(["0", "1"], "inference@box")
    assert [(p.name, p.env) for p in plan] == [
        ("inference-gpu0@box", {"CUDA_VISIBLE_DEVICES": "0"}),
        ("inference-gpu1@box", {"CUDA_VISIBLE_DEVICES": "1"}),
    ]


def test_no_gpu_means_one_unpinned_cpu_worker():
    assert [(p.name, p.env) for p in plan_workers([], "inference@%h")] == [("inference@%h", {})]
