"""Peak memory of one forward pass, each measured in a fresh process.

The peak is the most memory the forward pass holds at once above what was allocated before it
(parameters and input excluded, output included), after one warm-up call (so one-off caches are
not counted):

* on CUDA, from ``torch.cuda.max_memory_allocated``;
* on the CPU, from the torch profiler's ``[memory]`` events: every allocation and free made
  through torch's allocator, in time order, summed into a running total whose maximum is the peak.
  (The profiler's per-operator totals would miss memory allocated and freed inside one operator.)

Each measurement runs in its own process, forked from a server that has already imported torch,
timm and unifiedops (importing them takes seconds). :func:`check` verifies the method on
allocations of known size; the operator benchmark reports its result.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

# Silence kineto's log lines (profiler start/stop, missing GPU) in the measuring processes.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks._cases import CONFIGS, build_ops

__all__ = ["MIB", "PROBES", "MemoryProbe", "Probe", "check", "peak_bytes"]

MIB = 2**20


def _cpu_peak_bytes(run: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        output = run()
        del output
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def _cuda_peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    output = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - start
    del output
    return peak


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``run`` above those allocated before it.

    Call it in a fresh process, after a warm-up call, under the same grad mode as the benchmark.

    Args:
        run: The forward pass.
        device: Where it allocates.

    Returns:
        The peak in bytes.
    """
    if device.type == "cuda":
        return _cuda_peak_bytes(run, device)
    return _cpu_peak_bytes(run)


def _measure(run: Callable[[], object], device: torch.device) -> int:
    with torch.inference_mode():
        run()  # warm-up: lazily built tables, kernel selection
        return peak_bytes(run, device)


def _measure_op(config_key: str, op_key: str, device: str) -> int:
    """Body of a measuring process: peak bytes of one benchmarked operator."""
    device_ = torch.device(device)
    return _measure(build_ops(CONFIGS[config_key], device_)[op_key].run, device_)


@dataclass(frozen=True)
class Probe:
    """An allocation of known size, to check the method.

    Attributes:
        description: What it allocates.
        expected_mib: The least memory it must report, in MiB.
        exact: Whether it must report exactly ``expected_mib``.
        build: Makes the call to measure on a device.
    """

    description: str
    expected_mib: float
    exact: bool
    build: Callable[[torch.device], Callable[[], object]]

    def passes(self, mib: float) -> bool:
        """Whether ``mib`` is what this probe should report."""
        return abs(mib - self.expected_mib) < 1e-6 if self.exact else mib >= self.expected_mib


def _empty(device: torch.device) -> Callable[[], object]:
    return lambda: torch.empty(1024, 1024, device=device)


def _dw_conv(device: torch.device) -> Callable[[], object]:
    x = torch.randn(8, 96, 56, 56, device=device)
    w = torch.randn(96, 1, 7, 7, device=device)
    return lambda: F.conv2d(x, w, padding=3, groups=96)


PROBES: dict[str, Probe] = {
    "empty": Probe("torch.empty(1024, 1024)", 4.0, True, _empty),
    "dwconv": Probe("F.conv2d output of (8, 96, 56, 56)", 8 * 96 * 56 * 56 * 4 / MIB, False, _dw_conv),
}
"""Allocations of known size, by name."""


def _measure_probe(name: str, device: str) -> int:
    """Body of a measuring process: peak bytes of one probe."""
    device_ = torch.device(device)
    return _measure(PROBES[name].build(device_), device_)


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks._memory"])
    return context


class MemoryProbe:
    """Measures peak memory, one fresh process per measurement.

    Use as a context manager; measurements run ``workers`` at a time.

    Args:
        device: Where the measured operators run.
        workers: Measuring processes alive at once.
    """

    def __init__(self, device: torch.device, workers: int = 1) -> None:
        self._device = str(device)
        self._pool = ProcessPoolExecutor(workers, mp_context=_context(), max_tasks_per_child=1)

    def __enter__(self) -> MemoryProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)

    def op(self, config_key: str, op_key: str) -> Future[int]:
        """Peak bytes of operator ``op_key`` of configuration ``config_key`` (see :func:`build_ops`)."""
        return self._pool.submit(_measure_op, config_key, op_key, self._device)

    def probe(self, name: str) -> Future[int]:
        """Peak bytes of the probe ``name`` of :data:`PROBES`."""
        return self._pool.submit(_measure_probe, name, self._device)


def check(memory: MemoryProbe) -> list[str]:
    """Measure every probe and say whether each reports what it should.

    Args:
        memory: Where to measure.

    Returns:
        One line per probe.
    """
    futures = {name: memory.probe(name) for name in PROBES}
    results = {name: future.result() / MIB for name, future in futures.items()}
    lines = []
    for name, p in PROBES.items():
        bound = "expected" if p.exact else "at least"
        verdict = "ok" if p.passes(results[name]) else "WRONG"
        lines.append(f"{p.description}: {results[name]:.2f} MiB ({bound} {p.expected_mib:.2f}; {verdict})")
    return lines
