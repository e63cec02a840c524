"""The store package's typed fold plan: its identity and its round trip through ``/fold_plan``."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

from fusionfeat.store import FoldPlan, decode_attr, write_fold_plan


def test_fold_plan_identity_is_the_sha256_of_its_sorted_json():
    plan = FoldPlan("grouped", 3, 7, [0, 1, 2, -1, 0])
    by_hand = hashlib.sha256(
        b'{"fold": [0, 1, 2, -1, 0], "n_folds": 3, "protocol": "grouped", "seed": 7}').hexdigest()
    assert plan.sha256 == by_hand  # the value stores made before FoldPlan recorded as fold_plan_sha256
    assert plan.fold.dtype == np.int64 and plan.describe() == "--cv grouped --folds 3 --seed 7"
    assert plan == FoldPlan("grouped", 3, 7, np.array([0, 1, 2, -1, 0]))
    assert plan != FoldPlan("grouped", 3, 7, [0, 1, 2, -1, 1]) and plan != FoldPlan("stratified", 3, 7, plan.fold)


def test_fold_plan_round_trips_through_the_store_and_a_new_plan_drops_finetuned_folds(tmp_path):
    plan = FoldPlan("stratified", 2, 0, [1, 0, 1, 0])
    with h5py.File(tmp_path / "s.h5", "w") as h5:
        write_fold_plan(h5, plan)
        h5.create_group("finetuned/fold_0")
        write_fold_plan(h5, plan)  # the same plan again: nothing is dropped
        assert "finetuned" in h5
        group = h5["fold_plan"]
        attrs = {k: decode_attr(v) for k, v in group.attrs.items()}
        assert attrs == {"protocol": "stratified", "n_folds": 2, "seed": 0, "sha256": plan.sha256}
        assert FoldPlan.from_attrs(attrs, group["fold"][:]) == plan
        write_fold_plan(h5, FoldPlan("stratified", 2, 1, [0, 1, 0, 1]))
        assert "finetuned" not in h5 and int(h5["fold_plan"].attrs["seed"]) == 1
