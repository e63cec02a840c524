"""Cross-validation protocols, fold-local balancing, leakage guards, metrics and the CV loop.

Most tests use ``FakeStore`` (the ``FeatureStore`` reading interface over arrays) and a trivial
``Recorder`` head that remembers which (image, view) rows it was trained and tested on, so leakage is
checked on what the loop actually fed the estimator. Real logreg/svm and one tiny torch head also run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.evaluation.metrics import binary_metrics, confusion, summarize
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.protocols import LeakageError, check_split, make_plan, plan_folds
from fusionfeat.store import FoldPlan
from tests.conftest import one_torch_thread

# ----------------------------------------------------------------------------------------------- fakes

PAIR = ("resnet18", "vgg16")  # the fake store also holds the probe backbone "ident": named heads read the pair


@dataclass
class FakeStore:
    """The reading side of ``FeatureStore`` over in-memory arrays.

    Backbone ``ident`` stores ``[sample, view + 100 * (fine-tuned fold + 1)]`` so a head reading it
    reveals exactly which rows (and which fold's features) it was given.
    """

    labels: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    ok: np.ndarray
    n_views: int
    pooled_data: dict[str, np.ndarray]
    tokens_data: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["hem", "all"])
    positive_class: str = "all"
    weights_kind: str = "imagenet"
    plan: FoldPlan | None = None
    tuned: list[int] = field(default_factory=list)
    path: str = "fake.h5"

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    @property
    def paths(self) -> np.ndarray:
        return np.array([f"img_{i:04d}.bmp" for i in range(self.n_samples)])

    @property
    def backbones(self) -> list[str]:
        return list(self.pooled_data)

    def has_tokens(self, backbone: str, fold: int | None = None) -> bool:
        return backbone in self.tokens_data

    def block_shape(self, backbone: str, inputs: str, fold: int | None = None) -> tuple[int, int]:
        if inputs == "pooled":
            return 1, self.pooled_data[backbone].shape[-1]
        return tuple(self.tokens_data[backbone].shape[2:])

    def pooled(self, backbone, view=0, index=None, fold=None):
        data = self._at(self.pooled_data[backbone], view, index).astype(np.float32)
        if fold is not None:
            if fold not in self.tuned:
                raise FusionfeatError(f"no fine-tuned features for fold {fold}")
            if backbone == "ident":
                data[:, 1] += 100 * (fold + 1)
        return data

    def tokens(self, backbone, view=0, index=None, fold=None):
        return self._at(self.tokens_data[backbone], view, index)

    def _at(self, data, view, index):
        if not 0 <= view < data.shape[1]:
            raise FusionfeatError(f"view {view} is not stored")
        return data[:, view] if index is None else data[np.asarray(index), view]

    def provenance(self) -> dict:
        return {
            "store": self.path,
            "backbones": {
                b: {
                    "weights": "random" if self.weights_kind == "random" else "imagenet:IMAGENET1K_V1",
                    "weights_kind": self.weights_kind,
                    "weights_sha256": "" if self.weights_kind == "random" else "ab" * 32,
                    "seed": 0,
                    "input_size": 224,
                    "normalization": "imagenet",
                    "views": "dihedral8" if self.n_views == 8 else "1",
                    "precision": "fp32",
                    "device": "cpu",
                }
                for b in self.backbones
            },
        }

    def fold_plan(self) -> FoldPlan | None:
        return self.plan

    def finetuned_folds(self) -> list[int]:
        return list(self.tuned)


def fake_store(
    n_subjects: int = 12,
    cells: int = 6,
    n_views: int = 8,
    subjects_known: bool = True,
    tokens: bool = True,
    seed: int = 0,
    signal: float = 1.5,
) -> FakeStore:
    """Two-thirds of subjects ALL (label 1), the rest HEM: a 2:1 imbalance like C-NMC's."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), cells)
    labels = (subject < 2 * n_subjects // 3).astype(np.int64)
    n = len(labels)
    base = rng.normal(size=(n, 1, 8)) + signal * labels[:, None, None]
    views = base + 0.05 * rng.normal(size=(n, n_views, 8))
    ident = np.stack([np.repeat(np.arange(n)[:, None], n_views, 1), np.tile(np.arange(n_views), (n, 1))], -1)
    views = views.astype(np.float32)
    pooled = {"resnet18": views[..., :5], "vgg16": views[..., 3:], "ident": ident.astype(np.float32)}
    toks = {}
    if tokens:
        toks = {b: np.repeat(pooled[b][:, :, None, :], 4, 2).astype(np.float16) for b in ("resnet18", "vgg16")}
    groups = np.array([f"S{s}" for s in subject]) if subjects_known else np.full(n, "")
    return FakeStore(
        labels=labels,
        groups=groups,
        folds=np.full(n, -1, dtype=np.int64),
        ok=np.ones(n, dtype=bool),
        n_views=n_views,
        pooled_data=pooled,
        tokens_data=toks,
    )


class Recorder(ClassifierMixin, BaseEstimator):
    """Predicts the training prior; records the (sample, view) rows of every fit and every predict."""

    log: ClassVar[list[dict]] = []

    def __init__(self, class_weight=None, random_state=None):
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.prior_ = np.bincount(y, minlength=2) / len(y)
        self.entry_ = {"train": np.asarray(X[:, :2], dtype=np.int64), "y": np.asarray(y)}
        Recorder.log.append(self.entry_)
        return self

    def predict_proba(self, X):
        self.entry_["test"] = np.asarray(X[:, :2], dtype=np.int64)
        rng = np.random.default_rng(int(X[0, 0]))
        p = np.clip(self.prior_[1] + 0.01 * rng.normal(size=len(X)), 0, 1)
        return np.stack([1 - p, p], axis=1)


def _recorder_build(*, blocks=None, class_weight=None, random_state=None, device="auto", progress=False):
    return Recorder(class_weight=class_weight, random_state=random_state)


RECORDER = HeadSpec("recorder", ("ident",), "pooled", False, _recorder_build)


def recorded_fits(store, **kwargs) -> list[dict]:
    Recorder.log.clear()
    cross_validate(store, [RECORDER], progress=False, **kwargs)
    return list(Recorder.log)


# ----------------------------------------------------------------------------------------------- folds


def test_grouped_folds_are_subject_disjoint():
    store = fake_store(n_subjects=15)
    for seed in range(4):
        fold = plan_folds(store.labels, store.groups, store.folds, "grouped", 5, seed)
        assert set(fold) == set(range(5))
        for subject in np.unique(store.groups):
            assert len(set(fold[store.groups == subject])) == 1


def test_grouped_guard_raises_when_a_subject_is_on_both_sides():
    groups = np.array(["a", "a", "b", "c"])
    with pytest.raises(LeakageError, match="subjects"):
        check_split(np.array([0, 2]), np.array([1, 3]), groups, by_subject=True)
    with pytest.raises(LeakageError, match="images"):
        check_split(np.array([0, 1]), np.array([1, 3]), groups, by_subject=False)
    check_split(np.array([0, 1]), np.array([2, 3]), groups, by_subject=True)


def test_grouped_needs_as_many_subjects_as_folds():
    store = fake_store(n_subjects=3)
    with pytest.raises(FusionfeatError, match="3 subjects for 5 folds"):
        plan_folds(store.labels, store.groups, store.folds, "grouped", 5, 0)


def test_default_protocol_is_grouped_with_subjects_and_image_level_without():
    with_subjects = make_plan_for(fake_store(), protocol=None)
    assert with_subjects.protocol["name"] == "grouped"
    assert not with_subjects.protocol["image_level"]
    store = fake_store(subjects_known=False)
    fits = recorded_fits(store)
    assert len(fits) == 5
    result = cross_validate(store, [RECORDER], progress=False)
    assert result.protocol["name"] == "stratified"
    assert result.protocol["image_level"] and result.protocol["defaulted"]
    assert any("subjects are unknown" in w for w in result.protocol["warnings"])


def make_plan_for(store, protocol, balance="weight", repeats=1, seed=0):
    from fusionfeat.protocols import default_protocol

    return make_plan(
        store.labels, store.groups, store.folds, store.ok, store.n_views,
        protocol=protocol or default_protocol(store.groups), n_folds=5, seed=seed, repeats=repeats,
        balance=balance,
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["grouped", "stratified"])
@pytest.mark.parametrize("balance", ["augment", "weight"])
def test_no_copy_of_a_test_image_is_ever_trained_on(protocol, balance):
    store = fake_store()
    plan = make_plan_for(store, protocol, balance, repeats=2)
    for split in plan.splits:
        train_samples = plan.rows.sample[split.train]
        test_samples = plan.rows.sample[split.test]
        assert not np.intersect1d(train_samples, test_samples).size
        assert np.all(plan.rows.view[split.test] == 0)  # test folds: originals only
        if protocol == "grouped":
            assert not set(store.groups[train_samples]) & set(store.groups[test_samples])
    # and the same through the loop, on the rows the estimator really received
    for fit in recorded_fits(store, protocol=protocol, balance=balance, repeats=2):
        assert not np.intersect1d(fit["train"][:, 0], fit["test"][:, 0]).size
        assert np.all(fit["test"][:, 1] == 0)


def test_augment_balances_training_folds_with_minority_copies_only():
    store = fake_store()
    for fit in recorded_fits(store, protocol="grouped", balance="augment"):
        counts = np.bincount(fit["y"], minlength=2)
        assert counts[0] == counts[1]
        copies = fit["train"][:, 1] > 0
        assert copies.any()
        assert np.all(store.labels[fit["train"][copies, 0]] == 0)  # hem is the minority
        assert np.all((fit["train"][copies, 1] >= 1) & (fit["train"][copies, 1] <= 7))
        assert len({tuple(r) for r in fit["train"]}) == len(fit["train"])  # no row twice


def test_paper_protocol_puts_copies_of_one_image_on_both_sides():
    store = fake_store()
    plan = make_plan_for(store, "paper")
    assert plan.protocol["leaky"]
    labels = store.labels[plan.rows.sample[: plan.n_eval]]
    assert np.bincount(labels)[0] == np.bincount(labels)[1]  # balanced BEFORE splitting
    crossing = 0
    for split in plan.splits:
        crossing += np.intersect1d(plan.rows.sample[split.train], plan.rows.sample[split.test]).size
    assert crossing > 0
    fits = recorded_fits(store, protocol="paper")
    assert any(np.intersect1d(f["train"][:, 0], f["test"][:, 0]).size for f in fits)
    assert any((f["test"][:, 1] > 0).any() for f in fits)  # copies are tested too


def test_paper_and_augment_need_eight_views():
    store = fake_store(n_views=1)
    for kwargs in ({"protocol": "paper"}, {"balance": "augment"}):
        with pytest.raises(FusionfeatError, match="dihedral8"):
            cross_validate(store, [RECORDER], progress=False, **kwargs)


def test_predefined_uses_the_dataset_folds_and_leaves_out_unassigned_images():
    store = fake_store()
    store.folds = np.arange(store.n_samples) % 3
    store.folds[:4] = -1
    fits = recorded_fits(store, protocol="predefined")
    assert len(fits) == 3
    tested = np.concatenate([f["test"][:, 0] for f in fits])
    assert sorted(tested) == list(range(4, store.n_samples))
    for k, fit in enumerate(fits):
        assert np.all(store.folds[fit["test"][:, 0]] == k)
    store.folds[:] = -1
    with pytest.raises(FusionfeatError, match="predefined"):
        cross_validate(store, [RECORDER], protocol="predefined", progress=False)


def test_skipped_images_are_excluded_everywhere():
    store = fake_store()
    store.ok[[0, 7, 30]] = False
    for protocol, balance in (("grouped", "augment"), ("paper", "weight")):
        for fit in recorded_fits(store, protocol=protocol, balance=balance):
            seen = np.concatenate([fit["train"][:, 0], fit["test"][:, 0]])
            assert not np.isin([0, 7, 30], seen).any()


def test_same_seed_same_splits_and_numbers_other_seed_other_splits():
    store = fake_store()
    a = cross_validate(store, ["logreg"], seed=3, progress=False, backbones=PAIR)
    b = cross_validate(store, ["logreg"], seed=3, progress=False, backbones=PAIR)
    c = cross_validate(store, ["logreg"], seed=4, progress=False, backbones=PAIR)
    assert np.array_equal(a.test_fold, b.test_fold)
    np.testing.assert_array_equal(a.oof["logreg"], b.oof["logreg"])
    assert [f.metrics["roc_auc"] for f in a.folds] == [f.metrics["roc_auc"] for f in b.folds]
    assert not np.array_equal(a.test_fold, c.test_fold)


# ----------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1)
    pred = (p > rng.uniform(0.3, 0.7)).astype(int)
    for positive in (1, 0):
        got = binary_metrics(y, pred, p if positive == 1 else 1 - p, positive=positive)
        yt, yp = (y == positive).astype(int), (pred == positive).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(yt, yp, labels=[0, 1]).ravel()
        expected = {
            "accuracy": skm.accuracy_score(yt, yp),
            "precision": skm.precision_score(yt, yp, zero_division=0),
            "recall": skm.recall_score(yt, yp),
            "specificity": skm.recall_score(yt, yp, pos_label=0),
            "f1": skm.f1_score(yt, yp),
            "balanced_accuracy": skm.balanced_accuracy_score(yt, yp),
            "mcc": skm.matthews_corrcoef(yt, yp),
            "roc_auc": skm.roc_auc_score(yt, p if positive == 1 else 1 - p),
        }
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name
        assert confusion(y, pred, positive).tolist() == [[tn, fp], [fn, tp]]


def test_metrics_degenerate_folds_do_not_crash():
    got = binary_metrics(np.ones(5, int), np.ones(5, int), np.full(5, 0.9))
    assert got["accuracy"] == 1.0 and got["specificity"] == 0.0 and np.isnan(got["roc_auc"])
    assert got["mcc"] == 0.0  # sklearn's convention when a class is absent


def test_summary_is_the_per_fold_mean_and_sd_without_the_naive_interval():
    folds = [{"accuracy": a} for a in (0.8, 0.9, 0.7, 0.8)]
    s = summarize(folds, [0, 0, 1, 1])["accuracy"]
    assert s["mean"] == pytest.approx(0.8)
    assert s["std"] == pytest.approx(np.std([0.8, 0.9, 0.7, 0.8], ddof=1))
    assert (s["n_folds"], s["n_repeats"]) == (4, 2)
    assert "ci95_low" not in s  # the Student-t over repeat means is gone: corrected intervals in evidence


# ----------------------------------------------------------------------------------------------- the loop


def test_real_logreg_and_svm_through_cross_validate():
    store = fake_store(n_subjects=15, cells=8)
    result = cross_validate(store, ["logreg", "svm"], repeats=2, progress=False, backbones=PAIR)
    assert result.heads == ["logreg", "svm"]
    assert result.test_fold.shape == (2, store.n_samples)
    summary = result.summary()
    for head in result.heads:
        assert len(result.fold_results(head)) == 10
        assert not np.isnan(result.oof[head]).any()
        assert summary[head]["roc_auc"]["mean"] > 0.85
        for f in result.fold_results(head):
            assert np.sum(f.confusion) == f.n_test
            assert f.metrics["fit_time"] >= 0 and f.metrics["predict_time"] >= 0
            y = store.labels[result.rows["sample"][result.test_fold[f.repeat] == f.fold]]
            p = result.oof[head][f.repeat, result.test_fold[f.repeat] == f.fold]
            assert f.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert result.protocol["name"] == "grouped" and result.provenance["backbones"]


def test_positive_class_is_configurable():
    store = fake_store()
    a = cross_validate(store, ["logreg"], progress=False, backbones=PAIR)
    b = cross_validate(store, ["logreg"], positive="hem", progress=False, backbones=PAIR)
    np.testing.assert_allclose(a.oof["logreg"], 1 - b.oof["logreg"], atol=1e-6)
    ra, rb = a.fold_results("logreg")[0].metrics, b.fold_results("logreg")[0].metrics
    assert ra["recall"] == pytest.approx(rb["specificity"])


def test_tiny_torch_attention_head_records_history_and_fusion_weights():
    store = fake_store()
    build = partial(TorchHeadClassifier, architecture="attention-pooled", max_epochs=3, hidden=16, attn_dim=8)
    spec = HeadSpec("attention-pooled", ("resnet18", "vgg16"), "pooled", True, build)
    with one_torch_thread():
        result = cross_validate(store, [spec], folds=3, progress=False)
    fold = result.fold_results("attention-pooled")[0]
    assert fold.history and {"train_loss", "val_acc"} <= set(fold.history[0])
    assert result.oof_weights["attention-pooled"].shape == (1, store.n_samples, 2)
    by_class = result.fusion_weights()["attention-pooled"]
    assert set(by_class) == {"hem", "all"}
    assert sum(by_class["all"].values()) == pytest.approx(1.0)


def test_feature_matrix_concatenates_blocks_in_spec_order_and_keeps_row_order():
    store = fake_store()
    idx = np.array([5, 1, 9])
    pooled = HeadSpec("p", ("vgg16", "resnet18"), "pooled", False, None)
    X = feature_matrix(store, pooled, idx, view=2)
    assert X.dtype == np.float32 and X.shape == (3, 5 + 5)
    np.testing.assert_array_equal(X[:, :5], store.pooled_data["vgg16"][idx, 2])
    np.testing.assert_array_equal(X[:, 5:], store.pooled_data["resnet18"][idx, 2])
    tokens = HeadSpec("t", ("resnet18", "vgg16"), "tokens", True, None)
    T = feature_matrix(store, tokens, idx)
    assert T.dtype == np.float16 and T.shape == (3, 4 * 5 + 4 * 5)
    np.testing.assert_array_equal(T[:, :20], store.tokens_data["resnet18"][idx, 0].reshape(3, -1))


def test_finetuned_features_use_the_stored_plan_and_each_folds_features():
    store = fake_store()
    fold = plan_folds(store.labels, store.groups, store.folds, "grouped", 4, 11)
    store.plan = FoldPlan("grouped", 4, 11, fold)
    store.tuned = [0, 1, 2, 3]
    fits = recorded_fits(store, features="finetuned")
    assert len(fits) == 4
    for k, fit in enumerate(fits):
        assert np.all(fold[fit["test"][:, 0]] == k)
        assert np.all(fit["train"][:, 1] == 100 * (k + 1))  # fold k's fine-tuned features
    for bad, match in (
        ({"protocol": "stratified"}, "--cv grouped; evaluating with --cv stratified"),
        ({"folds": 5}, "--folds 4"),
        ({"seed": 0}, "--seed 11"),
        ({"repeats": 2}, "repeats"),
    ):
        with pytest.raises(FusionfeatError, match=match):
            cross_validate(store, [RECORDER], features="finetuned", progress=False, **bad)
    store.tuned = [0, 1]
    with pytest.raises(FusionfeatError, match="not fine-tuned"):
        cross_validate(store, [RECORDER], features="finetuned", progress=False)
    store.plan = None
    with pytest.raises(FusionfeatError, match="no fine-tuned"):
        cross_validate(store, [RECORDER], features="finetuned", progress=False)


def test_paper_protocol_has_no_per_sample_plan():
    store = fake_store()
    with pytest.raises(FusionfeatError, match="paper"):
        plan_folds(store.labels, store.groups, store.folds, "paper", 5, 0)


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        (None, {"heads": ["nope"]}, "unknown head"),
        (None, {"heads": []}, "no heads"),
        ("no_vgg", {"heads": ["concat"]}, "vgg16"),
        ("no_tokens", {"heads": ["attention-spatial"]}, "token"),
        ("one_class", {"heads": ["logreg"]}, "single class"),
        (None, {"heads": ["logreg"], "positive": "blast"}, "positive class"),
        (None, {"heads": ["logreg"], "balance": "smote"}, "--balance"),
        (None, {"heads": ["logreg"], "protocol": "loso"}, "--cv"),
        (None, {"heads": ["logreg"], "features": "tuned"}, "--features"),
        (None, {"heads": ["logreg"], "folds": 1}, "--folds"),
        (None, {"heads": ["logreg"], "repeats": 0}, "--repeats"),
        ("all_skipped", {"heads": ["logreg"]}, "no usable images"),
    ],
)
def test_bad_requests_raise_clear_errors(change, kwargs, match):
    store = fake_store()
    if change == "no_vgg":
        del store.pooled_data["vgg16"]
    elif change == "no_tokens":
        store.tokens_data = {}
    elif change == "one_class":
        store.labels[:] = 1
    elif change == "all_skipped":
        store.ok[:] = False
    heads = kwargs.pop("heads")
    with pytest.raises(FusionfeatError, match=match):
        cross_validate(store, heads, progress=False, backbones=PAIR, **kwargs)


def test_attention_resolves_to_the_variant_the_store_supports():
    from fusionfeat.heads.zoo import resolve_heads

    assert [s.name for s in resolve_heads(fake_store(), ["attention"], backbones=PAIR)] == ["attention-spatial"]
    no_tokens = fake_store(tokens=False)
    assert [s.name for s in resolve_heads(no_tokens, ["attention"], backbones=PAIR)] == ["attention-pooled"]
    assert len(resolve_heads(fake_store(), ["all"], backbones=PAIR)) == 7
    # by default fusion heads read every stored backbone; the probe "ident" has no tokens, so attention is pooled
    (spec,) = resolve_heads(fake_store(), ["attention"])
    assert spec.name == "attention-pooled" and spec.backbones == ("resnet18", "vgg16", "ident")


# ----------------------------------------------------------------------------------------------- real store


def write_real_store(path, store: FakeStore):
    """Write ``store``'s arrays as a real HDF5 store with the store module's own writer helpers."""
    from fusionfeat.store import create_feature_datasets, create_store_file, finish_store

    tmp = path.with_name(path.name + ".tmp")
    samples = {
        "path": store.paths,
        "label": store.labels,
        "group": store.groups.astype(str),
        "fold": store.folds,
        "sha256": np.array([f"{i:064x}" for i in range(store.n_samples)]),
        "ok": store.ok,
        "error": np.array([""] * store.n_samples),
    }
    h5 = create_store_file(tmp, samples, store.classes, {"created": "2024-01-01T00:00:00+00:00"})
    features = h5.create_group("features")
    for name in ("resnet18", "vgg16"):
        data = store.pooled_data[name]
        tok = store.tokens_data.get(name)
        group = create_feature_datasets(
            features, name, store.n_samples, store.n_views, data.shape[-1],
            None if tok is None else tok.shape[2], store.provenance()["backbones"][name],
        )  # fmt: skip
        group["pooled"][:] = data
        if tok is not None:
            group["tokens"][:] = tok
    finish_store(h5, tmp, path)
    return path


def test_cross_validate_on_a_real_hdf5_store(tmp_path):
    from fusionfeat.store import FeatureStore

    fake = fake_store()
    path = write_real_store(tmp_path / "features.h5", fake)
    with FeatureStore.open(path) as store:
        result = cross_validate(store, ["logreg"], balance="augment", progress=False, backbones=PAIR)
        X = feature_matrix(store, HeadSpec("t", ("resnet18", "vgg16"), "tokens", True, None), np.array([3, 1]))
    np.testing.assert_array_equal(X[0, :20], fake.tokens_data["resnet18"][3, 0].reshape(-1))
    assert result.protocol["name"] == "grouped"
    assert result.summary()["logreg"]["roc_auc"]["mean"] > 0.8
    assert result.provenance["backbones"]["resnet18"]["weights_kind"] == "imagenet"


# ----------------------------------------------------------------------------------------------- issue 9 options


class GroupRecorder(Recorder):
    """A Recorder whose fit takes ``groups``, as the torch heads' does; remembers them per fit."""

    def fit(self, X, y, groups=None):
        super().fit(X, y)
        self.entry_["groups"] = None if groups is None else np.asarray(groups)
        return self


def test_fit_receives_subject_or_source_image_groups():
    spec = HeadSpec("grouprec", ("ident",), "pooled", False, lambda **kw: GroupRecorder())
    for known in (True, False):
        store = fake_store(subjects_known=known)
        Recorder.log.clear()
        cross_validate(store, [spec], protocol="stratified", balance="augment", progress=False)
        for entry in Recorder.log:
            sample = entry["train"][:, 0]
            expected = store.groups[sample] if known else np.char.add("image-", sample.astype(str))
            assert entry["groups"].tolist() == expected.tolist()  # rotated copies share their image's id
            assert (entry["train"][:, 1] > 0).any()


def test_torch_inner_validation_split_keeps_groups_together():
    y = np.tile([0, 1, 1], 40)
    groups = np.repeat([f"g{i}" for i in range(24)], 5)
    est = TorchHeadClassifier(val_fraction=0.2)
    fit, val = est._split(y, groups, np.random.RandomState(0))
    assert len(val) and not set(groups[fit]) & set(groups[val])
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(y)))


def test_operating_point_predictions_are_thresholded_on_training_folds_only():
    store = fake_store(n_subjects=15, cells=8)
    result = cross_validate(store, ["logreg"], operating_point="sens=0.95", progress=False)
    pos = 1
    for f in result.fold_results("logreg"):
        test = result.test_fold[f.repeat] == f.fold
        p = result.oof["logreg"][f.repeat, test]
        assert 0 < f.threshold < 1 and f.inner_rates["sensitivity"] >= 0.95
        np.testing.assert_array_equal(result.oof_pred["logreg"][f.repeat, test], (p >= f.threshold).astype(float))
        y = result.rows["label"][test] == pos
        assert f.metrics["recall"] == pytest.approx(np.mean(p[y] >= f.threshold))
        assert f.metrics["specificity"] == pytest.approx(np.mean(p[~y] < f.threshold))


def test_calibrate_wraps_each_head_and_changes_probabilities_not_ranks():
    store = fake_store(n_subjects=15, cells=8)
    plain = cross_validate(store, ["logreg"], progress=False)
    sig = cross_validate(store, ["logreg"], calibrate="sigmoid", progress=False)
    assert not np.allclose(plain.oof["logreg"], sig.oof["logreg"])
    for f, g in zip(plain.fold_results("logreg"), sig.fold_results("logreg"), strict=True):
        assert f.metrics["roc_auc"] == pytest.approx(g.metrics["roc_auc"])  # Platt is monotone per fold
    assert sig.options["calibrate"] == "sigmoid"


@pytest.mark.parametrize("kwargs, message", [
    ({"calibrate": "beta"}, "calibrate"),
    ({"operating_point": "ppv=0.9"}, "sens=TARGET"),
    ({"operating_point": "sens=1.5"}, "sens=TARGET"),
    ({"subject_aggregate": "max"}, "subject-aggregate"),
    ({"head_params": {"logreg": {"gamma": "1"}}}, "valid: "),
    ({"head_params": {"svm": {"C": "1"}}}, "no head 'svm'"),
    ({"head_params": {"*": {"nonsense": "1"}}}, "no head in this run has a parameter 'nonsense'"),
    ({"head_params": {"logreg": {"C": "-1"}}}, "failed with --head-param"),
])
def test_bad_options_are_refused_in_one_line(kwargs, message):
    with pytest.raises(FusionfeatError, match=message) as err:
        cross_validate(fake_store(), ["logreg"], progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_head_params_are_set_typed_and_recorded():
    store = fake_store()
    result = cross_validate(store, ["logreg", "svm"], folds=3, progress=False,
                            head_params={"*": {"C": "0.25"}, "svm": {"gamma": "0.5"}})
    assert result.head_info["logreg"]["params"]["logisticregression__C"] == 0.25
    assert result.head_info["svm"]["params"]["weightedplattsvc__C"] == 0.25
    assert result.head_info["svm"]["params"]["weightedplattsvc__gamma"] == 0.5


def test_svm_records_the_kernel_each_fold_used_and_the_report_says_when_it_was_approximated():
    from fusionfeat.report.markdown import render_report
    from fusionfeat.report.run import run_json

    store = fake_store()
    approx = cross_validate(store, ["svm"], folds=3, progress=False, head_params={"svm": {"max_exact_rows": "10"}})
    assert approx.head_info["svm"]["params"]["weightedplattsvc__max_exact_rows"] == 10
    n_train = [f.n_train for f in approx.fold_results("svm")]
    assert [f.kernel for f in approx.fold_results("svm")] == [f"rbf-nystroem({min(n, 1000)})" for n in n_train]
    data = run_json(approx, n_boot=20)
    assert [f["kernel"] for f in data["heads"]["svm"]["folds"]] == [f.kernel for f in approx.fold_results("svm")]
    assert "approximate kernel" in render_report(data) and "svm.max_exact_rows=none" in render_report(data)
    exact = cross_validate(store, ["svm"], folds=3, progress=False, head_params={"svm": {"max_exact_rows": "none"}})
    assert exact.head_info["svm"]["params"]["weightedplattsvc__max_exact_rows"] is None
    assert {f.kernel for f in exact.fold_results("svm")} == {"rbf"}
    assert "approximate kernel" not in render_report(run_json(exact, n_boot=20))


def test_svm_platt_sigmoid_is_fitted_with_the_class_weights():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.utils.class_weight import compute_sample_weight

    from fusionfeat.heads.svm import make_svm

    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 6))
    y = (rng.random(150) < 0.3).astype(int)
    X[y == 1] += 0.7
    got = make_svm("balanced", 0).fit(X, y).predict_proba(X)
    Xs = StandardScaler().fit_transform(X)
    ref = CalibratedClassifierCV(SVC(random_state=0), method="sigmoid", cv=5, ensemble=False)
    ref.fit(Xs, y, sample_weight=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(got, ref.predict_proba(Xs), rtol=1e-12, atol=1e-12)
    old = CalibratedClassifierCV(SVC(random_state=0, class_weight="balanced"), method="sigmoid", cv=5,
                                        ensemble=False).fit(Xs, y).predict_proba(Xs)
    assert (got[:, 1] >= 0.5).sum() > (old[:, 1] >= 0.5).sum()  # the old sigmoid (unweighted) undid the weights


def test_svm_on_a_tiny_fold_uses_fewer_sigmoid_folds_and_refuses_one_image_per_class():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from fusionfeat.heads.svm import WeightedPlattSVC

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(9, 3)), np.array([0] * 6 + [1] * 3)
    X[y == 1] += 1.0
    got = WeightedPlattSVC(random_state=0).fit(X, y).predict_proba(X)  # 3 images of class 1: 3 sigmoid folds
    ref = CalibratedClassifierCV(SVC(random_state=0), method="sigmoid", cv=3, ensemble=False).fit(X, y)
    np.testing.assert_allclose(got, ref.predict_proba(X), rtol=1e-12, atol=1e-12)
    with pytest.raises(FusionfeatError, match="at least 2 training images of each class"):
        WeightedPlattSVC().fit(X[:7], y[:7])


def test_svm_platt_sigmoid_uses_grouped_inner_folds_when_given_groups():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.utils.class_weight import compute_sample_weight

    from fusionfeat.heads.calibration import fit_estimator
    from fusionfeat.heads.svm import make_svm

    rng = np.random.default_rng(1)
    groups = np.repeat([f"s{i}" for i in range(30)], 4)  # 30 subjects, 4 cells each
    y = np.repeat((rng.random(30) < 0.35).astype(int), 4)
    X = rng.normal(size=(120, 5)) + 0.8 * y[:, None]
    got = fit_estimator(make_svm("balanced", 0), X, y, groups).predict_proba(X)
    Xs = StandardScaler().fit_transform(X)
    splits = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(Xs, y, groups))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])  # no subject on both sides of a sigmoid fold
    ref = CalibratedClassifierCV(SVC(random_state=0), method="sigmoid", cv=splits, ensemble=False)
    ref.fit(Xs, y, sample_weight=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(got, ref.predict_proba(Xs), rtol=1e-12, atol=1e-12)
    ungrouped = make_svm("balanced", 0).fit(X, y).predict_proba(X)
    assert not np.allclose(got, ungrouped)  # the groups changed the sigmoid's folds


def test_isotonic_operating_point_inner_sensitivity_is_no_further_from_target():
    store = fake_store(signal=0.8)
    got = {}
    for cal in (None, "isotonic"):
        result = cross_validate(store, ["logreg", "svm"], folds=3, progress=False, backbones=PAIR, calibrate=cal,
                                operating_point="sens=0.95")
        got[cal] = {h: np.array([f.inner_rates["sensitivity"] for f in result.fold_results(h)]) for h in result.heads}
    for head in ("logreg", "svm"):
        assert np.all(np.abs(got["isotonic"][head] - 0.95) <= np.abs(got[None][head] - 0.95) + 1e-12), head


def test_svm_with_too_few_groups_keeps_the_ungrouped_sigmoid_folds():
    from fusionfeat.heads.calibration import fit_estimator
    from fusionfeat.heads.svm import make_svm

    rng = np.random.default_rng(2)
    y = np.r_[np.ones(40, dtype=int), np.zeros(20, dtype=int)]
    X = rng.normal(size=(60, 4)) + y[:, None]
    groups = np.r_[[f"a{i % 8}" for i in range(40)], ["h0"] * 20]  # one HEM subject: no grouped fold can hold it out
    got = fit_estimator(make_svm("balanced", 0), X, y, groups).predict_proba(X)
    np.testing.assert_array_equal(got, make_svm("balanced", 0).fit(X, y).predict_proba(X))


# ----------------------------------------------------------------------------------------------- fold layout


def test_permute_rows_in_place_equals_fancy_indexing():
    from fusionfeat.evaluation.row_layout import permute_rows

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        for source in (np.arange(n), rng.permutation(n), np.roll(np.arange(n), 1)):
            X = rng.normal(size=(n, 3)).astype(np.float16)
            expected = X[source].copy()
            permute_rows(X, source)
            np.testing.assert_array_equal(X, expected)


def test_row_layout_gives_each_split_its_rows_as_views_of_the_shared_matrix():
    from fusionfeat.evaluation.cv import RowLayout
    from fusionfeat.protocols import Split

    rng = np.random.default_rng(1)
    original = rng.normal(size=(40, 5)).astype(np.float16)
    X = original.copy()
    layout = RowLayout(len(X))
    for k in range(6):
        order = rng.permutation(40)
        left_out = 3 if k % 2 else 0  # rows in neither side (e.g. copies of test images) stay in X, unused
        split = Split(repeat=0, fold=k, train=order[:30 - left_out], test=order[30:])
        X_train, X_test = layout.arrange(X, split)
        np.testing.assert_array_equal(X_train, original[split.train])
        np.testing.assert_array_equal(X_test, original[split.test])
        assert np.shares_memory(X_train, X) and np.shares_memory(X_test, X)
    np.testing.assert_array_equal(np.sort(X, axis=0), np.sort(original, axis=0))  # same rows, moved


def test_cross_validation_feeds_the_same_rows_with_the_in_place_layout():
    store = fake_store()
    fits = recorded_fits(store, protocol="paper", folds=5, repeats=2, seed=0)
    plan = make_plan_for(store, "paper", repeats=2)
    ident = np.stack([np.asarray(plan.rows.sample), np.asarray(plan.rows.view)], axis=1)
    assert len(fits) == len(plan.splits)
    for fit, split in zip(fits, plan.splits, strict=True):
        np.testing.assert_array_equal(fit["train"], ident[split.train])
        np.testing.assert_array_equal(fit["test"], ident[split.test])


def test_rows_matrix_reads_in_chunks_without_changing_x(monkeypatch):
    import fusionfeat.heads.inputs as hi
    from fusionfeat.heads.zoo import fusion_head

    store = fake_store()
    plan = make_plan_for(store, "paper")
    spec = fusion_head("attention-spatial", ("resnet18", "vgg16"))
    assert spec.inputs == "tokens"
    whole = hi.rows_matrix(store, spec, plan.rows)
    sample, view = np.asarray(plan.rows.sample), np.asarray(plan.rows.view)
    direct = np.concatenate([np.stack([store.tokens(b, view=int(v), index=np.array([s]))[0]
                                       for s, v in zip(sample, view, strict=True)]).reshape(len(sample), -1)
                             for b in spec.backbones], axis=1)
    np.testing.assert_array_equal(whole, direct)  # against reads of one stored row at a time
    monkeypatch.setattr(hi, "READ_ROWS", 7)
    np.testing.assert_array_equal(hi.rows_matrix(store, spec, plan.rows), whole)
    index = np.array([5, 3, 5, 0, 11, 2, 9, 9, 1])
    monkeypatch.setattr(hi, "READ_ROWS", 2)
    chunked = hi.feature_matrix(store, spec, index)
    monkeypatch.setattr(hi, "READ_ROWS", 1000)
    np.testing.assert_array_equal(chunked, hi.feature_matrix(store, spec, index))


def test_row_layout_copies_the_right_rows_when_a_split_repeats_a_row():
    from fusionfeat.evaluation.cv import RowLayout
    from fusionfeat.protocols import Split

    original = np.arange(24, dtype=np.float32).reshape(8, 3)
    X = original.copy()
    layout = RowLayout(len(X))
    layout.arrange(X, Split(repeat=0, fold=0, train=np.array([7, 6, 5, 4]), test=np.array([0, 1])))
    X_train, X_test = layout.arrange(X, Split(repeat=0, fold=1, train=np.array([0, 0, 1]), test=np.array([2])))
    np.testing.assert_array_equal(X_train, original[[0, 0, 1]])
    np.testing.assert_array_equal(X_test, original[[2]])
