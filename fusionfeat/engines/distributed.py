"""torch.distributed plumbing for ``torchrun … -m fusionfeat``: the process group and the rank context that
``fusionfeat.engines.extract`` and ``fusionfeat.engines.finetune`` split their work with.

Every rank runs the same program; rank 0 alone decides (reads and checks the store, writes files) and the
others follow what it broadcasts, so a bad option fails on every rank with the same one-line message instead
of leaving ranks waiting at a barrier. CPUs use the gloo backend, CUDA devices NCCL (one device per process,
picked by ``LOCAL_RANK``). See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from fusionfeat.errors import FusionfeatError
from fusionfeat.runtime import resolve_device

T = TypeVar("T")
TIMEOUT = _dt.timedelta(minutes=60)  # a rank may wait this long for rank 0 to train or assemble


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world`` processes; a no-op context when ``world`` is 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, requested: str) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is used, else the requested one."""
        device = resolve_device(requested)
        if device.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result to every rank; its ``FusionfeatError`` is raised everywhere."""
        if not self.active:
            return fn()
        outcome: tuple[T | None, str | None] = (None, None)
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = (fn(), None)
            except FusionfeatError as exc:
                error, outcome = exc, (None, str(exc))
            except BaseException as exc:
                error, outcome = exc, (None, f"rank 0 failed: {type(exc).__name__}: {exc}")
        outcome = self.broadcast(outcome)
        if error is not None:
            raise error
        if outcome[1] is not None:
            raise FusionfeatError(outcome[1])
        return outcome[0]  # type: ignore[return-value]

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


SINGLE = DistContext()


def env_world() -> tuple[int, int]:
    """``(rank, world size)``: an initialised process group's, else as torchrun sets them; ``(0, 1)`` outside."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistContext]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) for the block; a plain context without torchrun."""
    rank, world = env_world()
    if world <= 1:
        yield SINGLE
        return
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    owned = not dist.is_initialized()
    if owned:
        use_cuda = resolve_device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    backend = dist.get_backend()
    _share_cpu_threads()
    try:
        yield DistContext(rank, world, local_rank, backend)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _share_cpu_threads() -> None:
    """Split the cores among the processes of this node unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
