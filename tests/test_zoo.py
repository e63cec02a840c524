"""The head zoo over any stored backbones, and the one X layout shared by CV, train and predict.

K = 3 tests use a synthetic HDF5 store written with ``fusionfeat.store``'s own writers (backbone names
need not be registered: heads only read the store), so they do not depend on which backbones exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusionfeat.bundle import load_bundle, save_bundle
from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.boosted import XGBoostClassifier
from fusionfeat.heads.inputs import embedding_matrix, feature_matrix, head_blocks, rows_matrix
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import (
    HEAD_NAMES,
    expand_head_names,
    head_from_record,
    resolve_head,
    resolve_heads,
    select_backbones,
)
from fusionfeat.predict import positive_proba
from fusionfeat.store import FeatureStore, create_feature_datasets, create_store_file, finish_store
from fusionfeat.train import train_head

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (n_tokens, dim) per backbone: widths and token counts differ, as real backbones' do
BLOCKS3 = {"alpha": (4, 6), "beta": (9, 5), "gamma": (1, 7)}


def write_synthetic_store(
    path: Path, blocks: dict[str, tuple[int, int]], n_subjects: int = 12, cells: int = 4, seed: int = 0,
    tokens: bool = True,
) -> Path:
    """A finished store whose backbones hold class-dependent random token maps (pooled = their mean)."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), cells)
    labels = (subject % 3 != 0).astype(np.int64)  # 2:1, like C-NMC
    n = len(labels)
    samples = {
        "path": np.array([f"{'all' if y else 'hem'}/cell_{i:03d}.png" for i, y in enumerate(labels)]),
        "label": labels,
        "group": np.array([f"S{s}" for s in subject]),
        "fold": np.full(n, -1, dtype=np.int64),
        "sha256": np.array([f"{i:064x}" for i in range(n)]),
        "ok": np.ones(n, dtype=bool),
        "error": np.array([""] * n),
    }
    tmp = path.with_name(path.name + ".tmp")
    h5 = create_store_file(tmp, samples, ["hem", "all"], {"created": "2024-01-01T00:00:00+00:00"})
    features = h5.create_group("features")
    for name, (t, c) in blocks.items():
        maps = rng.normal(size=(n, 1, t, c)) + 1.2 * labels[:, None, None, None] * rng.normal(size=c)
        attrs = {"backbone": name, "weights": "random", "weights_kind": "random", "weights_sha256": "", "seed": 0,
                 "input_size": 32, "normalization": "imagenet", "views": "1", "precision": "fp32", "device": "cpu"}
        group = create_feature_datasets(features, name, n, 1, c, t if tokens else None, attrs)
        group["pooled"][:] = maps.mean(axis=2).astype(np.float32)
        if tokens:
            group["tokens"][:] = maps.astype(np.float16)
    finish_store(h5, tmp, path)
    return path


@pytest.fixture(scope="module")
def store3(tmp_path_factory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("zoo") / "k3.h5", BLOCKS3)


# ----------------------------------------------------------------------------------------------- names


# What each of the paper's names meant before the zoo (estimators.HEADS): written out by hand.
PAPER = {
    "resnet18": (("resnet18",), "pooled", "mlp"),
    "vgg16": (("vgg16",), "pooled", "mlp"),
    "concat": (("resnet18", "vgg16"), "pooled", "mlp"),
    "attention-spatial": (("resnet18", "vgg16"), "tokens", "attention-spatial"),
    "attention-pooled": (("resnet18", "vgg16"), "pooled", "attention-pooled"),
    "svm": (("resnet18", "vgg16"), "pooled", "WeightedPlattSVC"),  # an RBF SVC; issue 9 fits its Platt sigmoid weighted
    "xgboost": (("resnet18", "vgg16"), "pooled", "XGBoostClassifier"),
    "logreg": (("resnet18", "vgg16"), "pooled", "LogisticRegression"),
}


def _kind(estimator) -> str:
    if isinstance(estimator, TorchHeadClassifier):
        return estimator.architecture
    if isinstance(estimator, XGBoostClassifier):
        return "XGBoostClassifier"
    return type(estimator.steps[-1][1].estimator if hasattr(estimator.steps[-1][1], "estimator")
                else estimator.steps[-1][1]).__name__


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_names_on_a_resnet18_vgg16_store_mean_what_they_meant(name):
    backbones, inputs, kind = PAPER[name]
    spec = resolve_head(name, True, ("resnet18", "vgg16"))
    assert (spec.name, spec.backbones, spec.inputs) == (name, backbones, inputs)
    est = spec.build(blocks=((1, 4),) * len(backbones), class_weight="balanced", random_state=3, device="cpu",
                     progress=False)
    assert _kind(est) == kind and spec.is_torch == isinstance(est, TorchHeadClassifier)
    if spec.is_torch:  # the estimator's defaults, as the fixed table built them
        assert est.get_params() == TorchHeadClassifier(blocks=((1, 4),) * len(backbones), architecture=kind,
                                                       class_weight="balanced", random_state=3,
                                                       device="cpu").get_params()
    assert HEAD_NAMES == ("resnet18", "vgg16", "concat", "attention", "svm", "xgboost", "logreg")


def test_three_stored_backbones(store3):
    with FeatureStore.open(store3) as fs:
        assert fs.backbones == ["alpha", "beta", "gamma"]
        specs = resolve_heads(fs, "all")
        assert [s.name for s in specs] == ["alpha", "beta", "gamma", "concat", "attention-spatial", "svm",
                                           "xgboost", "logreg"]
        for s in specs[3:]:
            assert s.backbones == ("alpha", "beta", "gamma")
        assert [s.backbones for s in specs[:3]] == [("alpha",), ("beta",), ("gamma",)]
        # --backbones picks and orders what fusion heads read; single heads stay available for every stored one
        (concat, gamma) = resolve_heads(fs, ["concat", "gamma"], backbones="gamma,alpha")
        assert concat.backbones == ("gamma", "alpha") and gamma.backbones == ("gamma",)
        assert [s.name for s in resolve_heads(fs, "all", backbones=["beta", "alpha"])] == [
            "beta", "alpha", "concat", "attention-spatial", "svm", "xgboost", "logreg"]
        assert head_blocks(fs, resolve_heads(fs, "attention", backbones="beta,gamma")[0]) == ((9, 5), (1, 7))
        with pytest.raises(FusionfeatError, match="--backbones delta: not in .*holds alpha, beta, gamma"):
            resolve_heads(fs, "concat", backbones="alpha,delta")


def test_one_backbone_refuses_fusion_and_all_is_its_single_head(tmp_path):
    path = write_synthetic_store(tmp_path / "one.h5", {"alpha": (4, 6)})
    with FeatureStore.open(path) as fs:
        assert [s.name for s in resolve_heads(fs, "all")] == ["alpha"]
        for name in ("concat", "attention", "attention-pooled", "svm", "xgboost", "logreg"):
            with pytest.raises(FusionfeatError, match=f"head '{name}' fuses two or more backbones") as err:
                resolve_heads(fs, name)
            assert "\n" not in str(err.value)
    with FeatureStore.open(write_synthetic_store(tmp_path / "k3.h5", BLOCKS3)) as fs:
        with pytest.raises(FusionfeatError, match="only gamma"):
            resolve_heads(fs, "all,svm", backbones="gamma")


def test_attention_is_pooled_unless_every_selected_backbone_has_tokens(tmp_path):
    path = write_synthetic_store(tmp_path / "pooled.h5", BLOCKS3, tokens=False)
    with FeatureStore.open(path) as fs:
        (spec,) = resolve_heads(fs, "attention")
        assert (spec.name, spec.inputs, spec.backbones) == ("attention-pooled", "pooled", ("alpha", "beta", "gamma"))
        with pytest.raises(FusionfeatError, match="token"):
            resolve_heads(fs, "attention-spatial")


def test_expand_head_names_validates_against_the_backbones():
    assert expand_head_names("all", ("a", "b", "c")) == ["a", "b", "c", *HEAD_NAMES[2:]]
    assert expand_head_names("all", ("a",)) == ["a"]
    assert expand_head_names("c,svm,c", ("a", "b"), stored=("a", "b", "c")) == ["c", "svm"]
    with pytest.raises(FusionfeatError, match="unknown head.*'resnet18'.*choose from a, b, concat"):
        expand_head_names("resnet18", ("a", "b"))
    with pytest.raises(FusionfeatError, match="fuses two or more"):
        expand_head_names("a,concat", ("a",))


def test_head_from_record_rebuilds_any_spec_and_refuses_others():
    for name in ("concat", "attention-spatial", "attention-pooled", "svm", "xgboost", "logreg"):
        spec = resolve_head(name, True, ("x", "y", "z"))
        again = head_from_record(spec.name, list(spec.backbones), spec.inputs)
        assert (again.name, again.backbones, again.inputs, again.is_torch) == (
            spec.name, spec.backbones, spec.inputs, spec.is_torch)
    assert head_from_record("densenet121", ["densenet121"], "pooled").backbones == ("densenet121",)
    for bad in (("nope", ["x", "y"], "pooled"), ("x", ["x", "y"], "pooled"), ("concat", ["x"], "pooled"),
                ("attention-spatial", ["x", "y"], "pooled"), ("concat", None, "pooled")):
        with pytest.raises(FusionfeatError):
            head_from_record(*bad)


def test_select_backbones_defaults_to_the_store_order(store3):
    with FeatureStore.open(store3) as fs:
        assert select_backbones(fs) == ("alpha", "beta", "gamma")
        assert select_backbones(fs, " gamma, beta ,gamma") == ("gamma", "beta")
        with pytest.raises(FusionfeatError, match="holds alpha, beta, gamma"):
            select_backbones(fs, ",")


# ----------------------------------------------------------------------------------------------- X layout


def _embeddings(fs: FeatureStore, index: np.ndarray) -> dict:
    """What ``iter_embeddings`` yields for these images: (pooled (N, 1, D) float32, tokens (N, 1, T, C) float16)."""
    return {b: (fs.pooled(b, index=index)[:, None], fs.tokens(b, index=index)[:, None]) for b in fs.backbones}


def test_embedding_and_store_layouts_are_one(store3):
    index = np.array([7, 2, 2, 30])
    with FeatureStore.open(store3) as fs:
        emb = _embeddings(fs, index)
        for spec in resolve_heads(fs, ["all", "attention-pooled"], backbones="gamma,alpha,beta"):
            X = feature_matrix(fs, spec, index)
            np.testing.assert_array_equal(embedding_matrix(spec, emb), X)
            assert embedding_matrix(spec, emb).dtype == X.dtype == (np.float16 if spec.inputs == "tokens"
                                                                     else np.float32)
        spatial = resolve_heads(fs, "attention-spatial", backbones="gamma,alpha,beta")[0]
        X = feature_matrix(fs, spatial, index)
        # hand-built: gamma's 1x7, alpha's 4x6, beta's 9x5 token maps, each flattened row-major
        order = ("gamma", "alpha", "beta")
        by_hand = np.concatenate([fs.tokens(b, index=index).reshape(len(index), -1) for b in order], axis=1)
        np.testing.assert_array_equal(X, by_hand)
        rows = type("Rows", (), {"sample": index, "view": np.zeros(len(index), dtype=np.int64)})()
        np.testing.assert_array_equal(rows_matrix(fs, spatial, rows), X)
        with pytest.raises(FusionfeatError, match="token maps"):
            embedding_matrix(spatial, {b: (p, None) for b, (p, _) in emb.items()})


@pytest.mark.parametrize("head", ["beta", "concat", "attention-spatial", "attention-pooled", "svm", "xgboost",
                                  "logreg"])
def test_bundle_probabilities_from_embeddings_equal_the_store_based_ones(store3, tmp_path, head):
    with FeatureStore.open(store3) as fs:
        estimator, spec, info = train_head(fs, head, device="cpu", progress=False, backbones=["beta", "gamma", "alpha"])
        index = np.arange(fs.n_samples)
        expected = estimator.predict_proba(feature_matrix(fs, spec, index))[:, 1]
        emb = _embeddings(fs, index)
    assert spec.backbones == (("beta",) if head == "beta" else ("beta", "gamma", "alpha"))
    bundle = load_bundle(save_bundle(tmp_path / "b", estimator, spec, info))
    assert (bundle.spec.name, bundle.spec.backbones, bundle.spec.inputs) == (spec.name, spec.backbones, spec.inputs)
    got = positive_proba(bundle, emb)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert 0.2 < np.mean(got >= 0.5) < 1.0  # a real classifier, not a constant
