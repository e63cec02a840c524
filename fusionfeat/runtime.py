"""Devices, precision and threads: the engineering around the models, kept apart from the models themselves."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
from collections.abc import Iterator

import torch

from fusionfeat.errors import FusionfeatError, PrecisionWarning
from fusionfeat.progress import progress as progress  # the one progress reporter, where the engines look for it

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU; ``cuda:k`` is checked to exist."""
    device = (str(device) if device else "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise FusionfeatError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:K") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise FusionfeatError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise FusionfeatError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif resolved.type != "cpu":
        raise FusionfeatError(f"--device {device!r}: only cpu and cuda are supported")
    return resolved


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16_MIN_SPEEDUP = 1.3  # auto picks bf16 on a CPU only where its bf16 matmul measured at least this much faster


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a 1024² matmul on this CPU (measured once per process, about 0.1 s); 0.0 where the
    CPU has no native bf16. Flags alone mislead: with AVX512-BF16 but no AMX, bf16 can be slower than fp32."""
    if not cpu_supports_bf16():
        return 0.0
    a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    return _matmul_seconds(a) / _matmul_seconds(a.to(torch.bfloat16))


def _matmul_seconds(a: torch.Tensor) -> float:
    torch.mm(a, a)  # warm-up
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, a)
        best = min(best, time.perf_counter() - start)
    return best


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA cards that support it (fp16 on older ones); on the CPU bf16 only where a bf16 matmul
    measured at least ``BF16_MIN_SPEEDUP`` times faster than fp32 (``cpu_bf16_speedup``), else fp32.

    An explicit bf16 on a CPU where it is emulated, or measured slower than fp32, works but warns
    (``PrecisionWarning``).
    """
    if precision not in PRECISIONS:
        raise FusionfeatError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise FusionfeatError("--precision fp16 is for CUDA; on the CPU use bf16 or fp32")
        if precision == "bf16" and device.type == "cpu":
            if not cpu_supports_bf16():
                warnings.warn("this CPU has no native bf16 (avx512_bf16/amx); bf16 will be several times slower "
                              "than fp32 here (--precision auto picks fp32)", PrecisionWarning, stacklevel=2)
            elif cpu_bf16_speedup() < 1.0:
                warnings.warn(f"on this CPU a bf16 matmul measured {1 / cpu_bf16_speedup():.1f}x slower than fp32 "
                              "(native bf16 but no AMX?); --precision auto picks fp32 here", PrecisionWarning,
                              stacklevel=2)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


def head_precision(device: torch.device) -> str:
    """The precision of the small torch heads: bf16 autocast on CUDA cards that support it, else fp32 (the CPU
    keeps fp32, whose numbers the heads were tuned with)."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_workers(device: torch.device) -> int:
    """Image-decoding workers when the user gives none: cores - 1, at most 4 (8 feeding a CUDA device)."""
    cpus = os.cpu_count() or 1
    return min(8, max(1, cpus - 1)) if device.type == "cuda" else min(4, max(1, cpus - 1))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def max_threads() -> int:
    """The most head threads worth asking for: 4 per core (more only thrash, and huge counts crash OpenMP)."""
    return 4 * (os.cpu_count() or 1)


DEFAULT_HEAD_THREADS = 1
_head_threads: list[int] = []  # counts chosen by the enclosing head_threads() blocks, innermost last


@contextlib.contextmanager
def head_threads(n: int | None = None) -> Iterator[int]:
    """CPU threads while fitting heads: torch's intra-op pool and the BLAS/OpenMP pools (numpy, scikit-learn).

    ``n=None`` keeps the count of an enclosing ``head_threads(n)`` block (so ``fit --threads`` reaches the
    library), else :data:`DEFAULT_HEAD_THREADS` (1): the heads' small matrices gain nothing from a second thread
    on an idle machine and lose ~12x when another process holds a core (docs/benchmarks.md, "Threads").
    The previous counts are restored on exit. Yields the count in force.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads()):
        raise FusionfeatError(f"--threads {n!r}: give a whole number from 1 to {max_threads()} (this machine has "
                              f"{os.cpu_count() or 1} cores)")
    from threadpoolctl import threadpool_limits

    count = n if n is not None else (_head_threads[-1] if _head_threads else DEFAULT_HEAD_THREADS)
    before = torch.get_num_threads()
    _head_threads.append(count)
    try:
        with threadpool_limits(limits=count):
            torch.set_num_threads(count)
            yield count
    finally:
        _head_threads.pop()
        torch.set_num_threads(before)
