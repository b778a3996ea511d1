"""Issue 20: torch threads follow the container's CPU quota (cgroup v2 ``cpu.max``), not the host's cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from service import runtime
from service.settings import Settings


@pytest.mark.parametrize(
    ("text", "cores"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("100000 100000", 1), ("50000 100000", 1), ("400000 100000", 4)],
)
def test_cpu_max_read(tmp_path: Path, text: str, cores: int | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert runtime.cgroup_cpu_limit(cpu_max) == cores


def test_missing_or_garbled_cpu_max_means_no_limit(tmp_path: Path) -> None:
    assert runtime.cgroup_cpu_limit(tmp_path / "absent") is None
    (tmp_path / "cpu.max").write_text("lots\n")
    assert runtime.cgroup_cpu_limit(tmp_path / "cpu.max") is None


def test_torch_threads_follow_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod limited to 1.5 cores on a host of 64: two usable cores, so one torch thread (one spare)."""
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    monkeypatch.setattr(runtime, "CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    before = torch.get_num_threads()
    try:
        assert runtime.usable_cpus() == 2
        assert runtime.configure_torch(Settings()) == 1 and torch.get_num_threads() == 1
        cpu_max.write_text("max 100000\n")
        assert runtime.usable_cpus() == 64  # no quota: the affinity
        cpu_max.write_text("800000 100000\n")
        assert runtime.configure_torch(Settings()) == 7
        assert runtime.configure_torch(Settings(inference_threads=3)) == 3  # the setting wins
    finally:
        torch.set_num_threads(before)
