"""Shared fixtures: where the real sample data lives, a tiny image folder made on the fly, and one CPU for all.

Every test sees the same CPU precision facts, whatever the machine: no native bf16, so ``--precision auto``
resolves to fp32 on an AMX server as on a laptop, and nothing one test measured or patched reaches the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusionfeat import runtime

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
HED_WEIGHTS = SHARED / "weights" / "vgg16_features-hed_bsds500.pth"

CPU_PROBES = (runtime.cpu_supports_bf16, runtime.cpu_bf16_speedup)  # the real, lru-cached ones


def clear_cpu_probes() -> None:
    """Forget what the real probes cached, so the next call reads /proc/cpuinfo and measures again."""
    for probe in CPU_PROBES:
        probe.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def plain_cpu_precision() -> Iterator[None]:
    """Pretend a CPU without native bf16 (``auto`` → fp32) for the whole session, module fixtures included.

    Without this, ``auto`` picked bf16 on an AMX machine (its measured speed-up, cached per process, decided),
    so results and warnings depended on the CPU and on which test measured first. A test that needs other
    facts patches ``runtime.cpu_supports_bf16`` / ``runtime.cpu_bf16_speedup`` itself; one that checks the
    real probes is marked ``@pytest.mark.real_cpu_precision`` (see ``fresh_cpu_probes``).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "cpu_supports_bf16", lambda: False)
        mp.setattr(runtime, "cpu_bf16_speedup", lambda: 0.0)
        yield


@pytest.fixture(autouse=True)
def fresh_cpu_probes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Empty the real probes' caches before and after each test; give a ``real_cpu_precision`` test the real
    probes in place of the session's plain CPU."""
    clear_cpu_probes()
    if request.node.get_closest_marker("real_cpu_precision") is not None:
        monkeypatch.setattr(runtime, "cpu_supports_bf16", CPU_PROBES[0])
        monkeypatch.setattr(runtime, "cpu_bf16_speedup", CPU_PROBES[1])
    yield
    clear_cpu_probes()


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny test models run far faster on one intra-op thread than with two fighting over busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Opt in per module: ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    with one_torch_thread():
        yield


def need(path: Path) -> Path:
    """Skip (with the reason) when real data that is not part of the repo is absent."""
    if not path.exists():
        pytest.skip(f"needs {path} (real sample data kept outside the repo; absent here)")
    return path


@pytest.fixture
def allidb2() -> Path:
    return need(SHARED_DATA / "ALL_IDB2")


@pytest.fixture
def cnmc_samples() -> Path:
    return need(SHARED_DATA / "C-NMC_2019_samples")


def write_cells(root: Path, per_class: int = 4, size: int = 48, seed: int = 0, suffix: str = ".png") -> Path:
    """A small class-per-folder dataset: dark round blobs on black, bigger for 'all'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(("hem", "all")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            radius = size * (0.22 + 0.1 * label) + rng.normal(0, 1)
            mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
            img = np.zeros((size, size, 3), np.uint8)
            img[mask] = rng.integers(60, 200, 3)
            Image.fromarray(img).save(root / name / f"cell_{i:03d}{suffix}")
    return root


@pytest.fixture
def tiny_folders(tmp_path: Path) -> Path:
    return write_cells(tmp_path / "cells")
