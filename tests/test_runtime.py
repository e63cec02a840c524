"""runtime.head_threads: the heads' CPU thread rule (1 thread unless the caller chooses), always restored; and the
CPU bf16 probes behind ``--precision auto``, checked with injected CPU facts so no outcome depends on this CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from fusionfeat import runtime
from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.boosted import XGBoostClassifier
from fusionfeat.runtime import DEFAULT_HEAD_THREADS, head_threads


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("three_threads")
def test_default_is_one_thread_and_the_previous_count_comes_back():
    assert DEFAULT_HEAD_THREADS == 1
    with head_threads() as n:
        assert n == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3


@pytest.mark.usefixtures("three_threads")
def test_explicit_value_is_honoured_and_reaches_nested_default_blocks():
    with head_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
        with head_threads() as inner:  # what cross_validate does inside `fit --threads 2`
            assert inner == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3
    with head_threads():  # outside any explicit block the default applies again
        assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("three_threads")
def test_restored_after_an_error():
    with pytest.raises(RuntimeError), head_threads(2):
        raise RuntimeError("fit failed")
    assert torch.get_num_threads() == 3
    with head_threads():
        assert torch.get_num_threads() == 1  # the failed block left no explicit count behind


def test_blas_pools_follow():
    pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not pools:
        pytest.skip("no BLAS library loaded by numpy here")
    with head_threads(1):
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_counts_are_user_errors(bad):
    with pytest.raises(FusionfeatError, match="--threads"), head_threads(bad):
        pass


def test_xgboost_n_jobs_follows_the_heads_count():
    pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    with head_threads(2):
        model = XGBoostClassifier(n_estimators=2).fit(X, y).model_
    assert model.get_params()["n_jobs"] == 2
    assert XGBoostClassifier(n_estimators=2, n_jobs=1).fit(X, y).model_.get_params()["n_jobs"] == 1


# ----------------------------------------------------------------------------------------------- CPU precision

CPU = torch.device("cpu")


def test_every_test_starts_on_a_cpu_without_native_bf16():
    """tests/conftest.py: ``auto`` is fp32 here whatever this machine is, and whatever earlier tests did."""
    assert not runtime.cpu_supports_bf16() and runtime.cpu_bf16_speedup() == 0.0
    assert runtime.resolve_precision("auto", CPU) == "fp32"


def test_injected_bf16_facts_hold_for_one_test_only(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 2.0)
    assert runtime.resolve_precision("auto", CPU) == "bf16"


def test_auto_never_measures_on_a_cpu_without_native_bf16(monkeypatch):
    def measured():
        raise AssertionError("cpu_bf16_speedup was called")

    monkeypatch.setattr(runtime, "cpu_bf16_speedup", measured)
    assert runtime.resolve_precision("auto", CPU) == "fp32"


@pytest.mark.real_cpu_precision
@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 avx512f", False), ("avx2 avx512_bf16", True),
                                           ("avx2 amx_bf16 amx_tile", True), (None, False)])
def test_native_bf16_is_read_from_the_cpu_flags_once(monkeypatch, flags, native):
    reads = []

    def fake_open(path, *args, **kwargs):
        reads.append(path)
        if flags is None:
            raise PermissionError(path)
        return io.StringIO(f"processor\t: 0\nflags\t\t: {flags}\n")

    monkeypatch.setattr(runtime, "open", fake_open, raising=False)
    assert runtime.cpu_supports_bf16() is native
    assert runtime.cpu_supports_bf16() is native
    assert reads == ["/proc/cpuinfo"]  # cached: read once per process


@pytest.mark.real_cpu_precision
def test_speedup_is_fp32_time_over_bf16_time_measured_once(monkeypatch):
    seconds = {torch.float32: 0.03, torch.bfloat16: 0.01}
    timed = []

    def fake_seconds(a: torch.Tensor) -> float:
        timed.append(a.dtype)
        return seconds[a.dtype]

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_matmul_seconds", fake_seconds)
    assert runtime.cpu_bf16_speedup() == pytest.approx(3.0)
    assert runtime.cpu_bf16_speedup() == pytest.approx(3.0) and timed == [torch.float32, torch.bfloat16]
    assert runtime.resolve_precision("auto", CPU) == "bf16"  # 3.0 >= BF16_MIN_SPEEDUP
    runtime.cpu_bf16_speedup.cache_clear()
    seconds[torch.bfloat16] = 0.025  # 1.2x: native bf16, but not worth it
    assert runtime.cpu_bf16_speedup() == pytest.approx(1.2) and len(timed) == 4
    assert runtime.resolve_precision("auto", CPU) == "fp32"


@pytest.mark.real_cpu_precision
def test_speedup_is_not_measured_without_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_matmul_seconds", lambda a: pytest.fail("measured without native bf16"))
    assert runtime.cpu_bf16_speedup() == 0.0
