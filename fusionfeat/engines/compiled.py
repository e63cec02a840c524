"""Compiled trunks for extraction: ``torch.compile`` (inductor) with frozen weights, one batch shape, checked.

Why: on a CPU with AMX, a bf16 forward in eager mode spends most of its time outside the convolutions (ResNet18:
batch norm, ReLU, residual adds and per-call weight casts are ~58% of its time; VGG16: unfused ReLU and
max-pool ~37%, docs/benchmarks.md "Extraction at the AMX CPU's pace"). Inductor with ``freezing`` folds batch
norm into the convolutions, prepacks their weights for oneDNN once, and fuses ReLU/add into them. It costs a
compile (tens of seconds, once per process and shape), so ``--compile auto`` uses it only where it measured a
gain and the run is long enough to pay that back: a bf16 run on a CPU with AMX of at least
:data:`AMX_MIN_FORWARDS` image views. Elsewhere (AVX2, AVX-512 without AMX, fp32, CUDA) auto stays eager;
``--compile on`` asks for it anywhere.

Every compiled trunk sees one batch shape (shorter batches are padded with zero rows and cut back), so it
compiles once; and before it is used its pooled output on a seeded check batch is compared with the eager
trunk's: beyond :data:`TOLERANCE` for the precision, the run stays eager (auto) or stops (on).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusionfeat.encoders import LoadedBackbone, embed
from fusionfeat.errors import CompileWarning, FusionfeatError
from fusionfeat.runtime import autocast

COMPILE_CHOICES = ("auto", "on", "off")
CPUINFO = "/proc/cpuinfo"
COMPILED = "inductor, frozen weights"  # what the store records for a compiled trunk
# Break-even on the 2-core AMX machine (docs/benchmarks.md, "Extraction at the AMX CPU's pace"): resnet18 + vgg16
# ran at 27 images/s eager and 42 compiled (0.013 s saved per image, batch 32); their compile took 17-37 s with a
# warm inductor cache and 50-141 s with an empty one (load 1.7-7 on 2 cores), so from 8,000 image views
# even a first, cold compile pays back.
AMX_MIN_FORWARDS = 8_000
RECOMPILE_LIMIT = 256  # compiled trunk instances per forward code in one process (dynamo's default: 8)
# Largest |compiled - eager| of the pooled vectors, as a fraction of the largest |eager| value, accepted per precision
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 3e-2}


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True where /proc/cpuinfo lists AMX bf16 tiles (``amx_bf16``)."""
    try:
        with open(CPUINFO) as fh:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in fh)
    except OSError:
        return False


def wants_compile(choice: str, device: torch.device, precision: str, n_forwards: int) -> bool:
    """Whether to compile the trunks: ``on``/``off`` as said; ``auto`` only for bf16 on a CPU with AMX and at least
    :data:`AMX_MIN_FORWARDS` image views to embed (where the compile was measured to pay back)."""
    if choice not in COMPILE_CHOICES:
        raise FusionfeatError(f"--compile {choice!r}: choose one of {', '.join(COMPILE_CHOICES)}")
    if choice != "auto":
        return choice == "on"
    return device.type == "cpu" and precision == "bf16" and n_forwards >= AMX_MIN_FORWARDS and cpu_has_amx()


class FixedBatch(nn.Module):
    """Runs ``module`` on exactly ``batch`` rows of a normal (not inference) tensor: fewer are padded with zero rows
    (their outputs dropped), more are split, so a compiled module never meets a second shape or tensor kind (nor
    recompiles for the last, short batch).
    Rows are independent in an eval-mode trunk, so padding changes no row's output beyond kernel rounding."""

    def __init__(self, module: nn.Module, batch: int):
        super().__init__()
        self.module, self.batch = module, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > self.batch:
            return torch.cat([self(part) for part in x.split(self.batch)])
        if n < self.batch or x.is_inference():
            # a normal tensor, never an inference one (made under inference_mode: another dispatch key set, which
            # dynamo would compile the whole trunk again for)
            with torch.inference_mode(False):
                full = torch.zeros((self.batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
                full = full.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else full
                full[:n] = x
            return self.module(full)[:n]
        return self.module(x)


class Frozen(nn.Module):
    """``torch.compile(module)`` whose compiles (the first call's, and any later one) run with inductor's
    ``freezing``: parameters become constants, so batch norm folds into the convolutions and oneDNN gets its
    weights prepacked once. (``torch.compile(options={"freezing": True})`` does not reach the step that reads it:
    measured with torch 2.14, its graphs still cast and reorder every weight at every call.)"""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        # every trunk instance is one more compile of the same forward code (its frozen parameters are guarded
        # on): past dynamo's default of 8 per code object a process that extracts often would run eager unsaid
        with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self.compiled(x)


@dataclass
class CompiledTrunks:
    """The modules to run per backbone (compiled or the eager trunks) and what the store records about them."""

    trunks: list[nn.Module]
    compiled: bool
    seconds: float = 0.0  # compile and check, wall time
    deviation: dict[str, float] | None = None  # per backbone: max |compiled - eager| / max |eager| on the check

    def attrs(self, name: str) -> dict:
        """Feature attributes of backbone ``name``: how its trunk ran."""
        if not self.compiled:
            return {"compile": "eager"}
        return {"compile": COMPILED, "compile_check": float(self.deviation[name]) if self.deviation else 0.0}


def eager(models: Sequence[LoadedBackbone]) -> CompiledTrunks:
    return CompiledTrunks([m.trunk for m in models], compiled=False)


def compile_trunks(models: Sequence[LoadedBackbone], device: torch.device, precision: str, batch: int,
                   input_size: int, strict: bool, seed: int = 0) -> CompiledTrunks:
    """Compile every trunk (frozen weights, ``batch`` rows, channels_last) and check it against eager on one seeded
    batch. Failure or a deviation beyond :data:`TOLERANCE`: ``strict`` (``--compile on``) raises a
    ``FusionfeatError``; otherwise a ``CompileWarning`` and the eager trunks."""
    start = time.perf_counter()
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    trunks, deviation = [], {}
    try:
        for m in models:
            m.trunk.to(device, memory_format=torch.channels_last).eval()
            compiled = FixedBatch(Frozen(m.trunk), batch)
            with torch.inference_mode(), autocast(device, precision):
                got = embed(compiled, x, tokens=False)[0]
                want = embed(m.trunk, x, tokens=False)[0]
            deviation[m.spec.name] = relative_deviation(got, want)
            trunks.append(compiled)
    except Exception as exc:  # noqa: BLE001 - a missing C++ compiler or an unsupported op: a fact about this machine
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        return _refuse(models, f"torch.compile failed ({reason})", strict)
    worst = max(deviation, key=deviation.get)
    if deviation[worst] > TOLERANCE[precision]:
        return _refuse(models, f"the compiled {worst} trunk differs from eager by {deviation[worst]:.2g} of its "
                               f"largest value (tolerance {TOLERANCE[precision]:g} for {precision})", strict)
    return CompiledTrunks(trunks, compiled=True, seconds=time.perf_counter() - start, deviation=deviation)


def relative_deviation(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` (in float32; 0 when both are all zero)."""
    got, want = got.float(), want.float()
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale else diff


def _refuse(models: Sequence[LoadedBackbone], why: str, strict: bool) -> CompiledTrunks:
    if strict:
        raise FusionfeatError(f"--compile on: {why}; rerun with --compile off (eager)")
    warnings.warn(f"--compile auto: {why}; extracting with eager trunks", CompileWarning, stacklevel=3)
    return eager(models)
