"""retain_host_memory: glibc's malloc stops unmapping freed tensors (no page faults per step)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

import hugnc.train
from hugnc import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 20 cycles of allocating, filling and freeing a 64 MiB tensor, as a training step does with its
# activations; reports the minor page faults of the cycles after a warm-up.
ALLOCATION_CYCLES = """
import json, resource, sys, torch
from hugnc.host_memory import retain_freed_host_memory
took = retain_freed_host_memory() if sys.argv[1] == "retain" else None
def cycle():
    tensor = torch.ones(16 * 2**20)  # 64 MiB of float32, written: every page touched
    del tensor
for _ in range(10):  # warm-up: the heap grows until freed blocks fit the aligned requests
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"took": took, "faults": after - before}))
"""


def _page_faults(mode: str, script: str = ALLOCATION_CYCLES) -> dict:
    """Run ``script`` (one of the cycle scripts here) with ``mode``; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting acts on glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults() -> None:
    system = _page_faults("system")
    retained = _page_faults("retain")
    assert retained["took"] is True
    pages_per_cycle = 64 * 2**20 // 4096
    # The system allocator unmaps each freed 64 MiB and faults every page in again next cycle.
    assert system["faults"] >= 20 * pages_per_cycle * 0.9
    # Retained: the first cycle's pages are reused (a few faults from the interpreter itself).
    assert retained["faults"] < pages_per_cycle, (system, retained)


def test_other_c_libraries_keep_their_allocator(monkeypatch) -> None:
    def no_ctypes(*args: object, **kwargs: object) -> None:
        raise AssertionError("mallopt must not be looked up outside glibc")

    monkeypatch.setattr(host_memory.ctypes, "CDLL", no_ctypes)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.retain_freed_host_memory() is False
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Darwin")
    assert host_memory.retain_freed_host_memory() is False


@pytest.mark.parametrize("retain", [True, False])
def test_config_switch_reaches_the_allocator(compose_cfg, monkeypatch, retain: bool) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(hugnc.train, "retain_freed_host_memory", lambda: calls.append(True))
    cfg = compose_cfg(f"retain_host_memory={str(retain).lower()}")
    hugnc.train.configure_process(cfg)
    assert calls == ([True] if retain else [])


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "ddp_cpu", "debug"])
def test_every_trainer_retains_host_memory_by_default(compose_cfg, trainer: str) -> None:
    assert compose_cfg(f"trainer={trainer}").retain_host_memory is True


# A DataLoader worker forked from a process that retains freed memory: the worker's own cycles.
WORKER_CYCLES = """
import json, resource, sys, torch
from torch.utils.data import DataLoader, Dataset
from hugnc.data.base import init_loader_worker
from hugnc.host_memory import retain_freed_host_memory

class Cycles(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, index):
        def cycle():
            tensor = torch.ones(16 * 2**20)
            del tensor
        for _ in range(10):
            cycle()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            cycle()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

retain_freed_host_memory()
init = init_loader_worker if sys.argv[1] == "release" else None
loader = DataLoader(Cycles(), batch_size=None, num_workers=1, worker_init_fn=init)
print(json.dumps({"faults": int(next(iter(loader)))}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the setting acts on glibc's malloc only")
def test_loader_workers_do_not_keep_their_peak_heap() -> None:
    def worker_faults(mode: str) -> int:
        return _page_faults(mode, WORKER_CYCLES)["faults"]

    pages_per_cycle = 64 * 2**20 // 4096
    # Inherited: the worker retains freed memory too (no faults) ...
    assert worker_faults("inherit") < pages_per_cycle
    # ... released by hugnc's worker set-up: freed memory goes back to the OS every cycle.
    assert worker_faults("release") >= 20 * pages_per_cycle * 0.9
