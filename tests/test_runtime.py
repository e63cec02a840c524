"""runtime.head_threads: the heads' CPU thread rule (1 thread unless the caller chooses), always restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

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
