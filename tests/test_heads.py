"""Heads and estimators: shapes, learning, determinism, fusion weights, state round trip, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.boosted import XGBoostClassifier
from fusionfeat.heads.modules import AttentionFusion
from fusionfeat.heads.svm import WeightedPlattSVC
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HEAD_NAMES, expand_head_names, resolve_head

pytestmark = pytest.mark.usefixtures("single_torch_thread")

POOLED = ((1, 6), (1, 10))
TOKENS = ((4, 6), (9, 10))  # backbones may differ in token count and width
FAST = dict(hidden=32, attn_dim=16, attn_heads=2, max_epochs=15, lr=3e-3, batch_size=32, device="cpu")


def make_data(blocks, n=160, seed=0, shift=3.0):
    """Two classes that differ in the mean of every block's first channel (float16, like the store)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    parts = []
    for t, c in blocks:
        block = rng.normal(size=(n, t, c))
        block[:, :, 0] += shift * y[:, None]
        parts.append(block.reshape(n, t * c))
    return np.concatenate(parts, axis=1).astype(np.float16), y


def head_cases():
    for name in ("resnet18", "vgg16", "concat", "attention-pooled", "attention-spatial", "svm", "xgboost", "logreg"):
        yield pytest.param(name, id=name)


def build(name, random_state=0):
    spec = resolve_head(name, has_tokens=True)
    if spec.backbones == ("resnet18",):
        blocks = POOLED[:1]
    elif spec.backbones == ("vgg16",):
        blocks = POOLED[1:]
    else:
        blocks = TOKENS if spec.inputs == "tokens" else POOLED
    est = spec.build(blocks=blocks, class_weight="balanced", random_state=random_state, device="cpu", progress=False)
    if spec.is_torch:
        est.set_params(**{k: v for k, v in FAST.items() if k != "device"})
    return est, blocks


@pytest.mark.parametrize("name", list(head_cases()))
def test_every_head_fits_predicts_and_learns(name):
    est, blocks = build(name)
    X, y = make_data(blocks, n=200)
    X_test, y_test = make_data(blocks, n=100, seed=1)
    est.fit(X, y)
    proba = est.predict_proba(X_test)
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(est.classes_) == [0, 1]
    pred = est.predict(X_test)
    assert pred.shape == (100,)
    assert (pred == y_test).mean() > 0.8


def test_torch_head_records_history_and_restores_best_epoch():
    X, y = make_data(POOLED)
    est = TorchHeadClassifier(blocks=POOLED, random_state=0, **{**FAST, "max_epochs": 6, "patience": 2})
    est.fit(X, y)
    assert set(est.history_[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc"}
    val_losses = [row["val_loss"] for row in est.history_]
    assert est.best_epoch_ == est.history_[int(np.argmin(val_losses))]["epoch"]
    assert est.n_features_in_ == X.shape[1]
    assert est.decision_function(X).shape == (len(X),)


def test_no_validation_split_trains_all_epochs():
    X, y = make_data(POOLED, n=40)
    est = TorchHeadClassifier(blocks=POOLED, random_state=0, val_fraction=0.0, **{**FAST, "max_epochs": 3})
    est.fit(X, y)
    assert len(est.history_) == 3 and est.best_epoch_ == 3
    assert est.history_[-1]["val_loss"] is None


@pytest.mark.parametrize("architecture", ["mlp", "attention-pooled", "attention-spatial"])
def test_same_seed_same_probabilities(architecture):
    X, y = make_data(TOKENS, n=80)
    est = TorchHeadClassifier(blocks=TOKENS, architecture=architecture, random_state=3, **{**FAST, "max_epochs": 3})
    first = est.fit(X, y).predict_proba(X)
    second = clone(est).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    other = clone(est).set_params(random_state=4).fit(X, y).predict_proba(X)
    assert not np.array_equal(first, other)


def test_fit_leaves_global_torch_rng_alone():
    X, y = make_data(POOLED, n=60)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TorchHeadClassifier(blocks=POOLED, random_state=0, **{**FAST, "max_epochs": 2}).fit(X, y)
    torch.testing.assert_close(torch.rand(3), expected)


def test_clone_get_set_params():
    est = TorchHeadClassifier(blocks=TOKENS, architecture="attention-spatial", random_state=1)
    params = est.get_params()
    assert params["blocks"] is TOKENS and params["architecture"] == "attention-spatial"
    copy = clone(est).set_params(hidden=64, lr=0.01)
    assert copy.hidden == 64 and copy.lr == 0.01 and est.hidden == 512
    assert clone(XGBoostClassifier(class_weight="balanced")).get_params()["class_weight"] == "balanced"


@pytest.mark.parametrize("architecture", ["attention-pooled", "attention-spatial"])
def test_fusion_weights_sum_to_one_per_image(architecture):
    blocks = TOKENS + ((2, 3),)  # three backbones
    X, y = make_data(blocks, n=60)
    est = TorchHeadClassifier(blocks=blocks, architecture=architecture, random_state=0, **{**FAST, "max_epochs": 2})
    weights = est.fit(X, y).fusion_weights(X[:7])
    assert weights.shape == (7, 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert (weights >= 0).all()


def test_fusion_weights_only_on_attention_heads():
    est = TorchHeadClassifier(blocks=POOLED, architecture="mlp")
    assert not hasattr(est, "fusion_weights")
    with pytest.raises(AttributeError, match="fusion_weights") as info:
        est.fusion_weights(np.zeros((1, 16)))
    assert "needs an attention architecture" in str(info.value.__cause__)


def test_attention_needs_two_backbones():
    with pytest.raises(FusionfeatError, match="at least 2 backbones"):
        AttentionFusion(((1, 8),))


def test_blocks_mismatch_is_a_user_error():
    X, y = make_data(POOLED, n=40)
    est = TorchHeadClassifier(blocks=((1, 6), (1, 11)), **FAST)
    with pytest.raises(FusionfeatError, match="describe 17"):
        est.fit(X, y)
    with pytest.raises(FusionfeatError, match="blocks"):
        TorchHeadClassifier(blocks=((1, 0),), **FAST).fit(X, y)


def test_bad_parameters_are_user_errors():
    X, y = make_data(POOLED, n=40)
    for params in ({"architecture": "transformer"}, {"class_weight": "auto"}, {"val_fraction": 1.0}):
        with pytest.raises(FusionfeatError):
            TorchHeadClassifier(blocks=POOLED, **{**FAST, **params}).fit(X, y)


def test_nan_input_is_rejected():
    X, y = make_data(POOLED, n=40)
    X[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TorchHeadClassifier(blocks=POOLED, **FAST).fit(X, y)


@pytest.mark.parametrize("architecture", ["mlp", "attention-spatial"])
def test_state_round_trip_gives_identical_probabilities(tmp_path, architecture):
    X, y = make_data(TOKENS, n=80)
    labels = np.where(y == 1, "all", "hem")
    est = TorchHeadClassifier(blocks=TOKENS, architecture=architecture, random_state=0, **{**FAST, "max_epochs": 3})
    est.fit(X, labels)
    config, state = est.get_state()
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(state, tmp_path / "weights.pt")
    loaded = TorchHeadClassifier.from_state(
        json.loads((tmp_path / "config.json").read_text()), torch.load(tmp_path / "weights.pt", weights_only=True)
    )
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    assert list(loaded.classes_) == ["all", "hem"]
    assert loaded.history_ == est.history_ and loaded.best_epoch_ == est.best_epoch_
    assert loaded.get_params()["blocks"] == [list(b) for b in TOKENS]


def test_resolve_head():
    assert resolve_head("attention", has_tokens=True).name == "attention-spatial"
    assert resolve_head("attention", has_tokens=False).name == "attention-pooled"
    assert resolve_head("attention-pooled", has_tokens=True).inputs == "pooled"
    assert resolve_head("svm", has_tokens=False).backbones == ("resnet18", "vgg16")
    assert resolve_head("vgg16", has_tokens=False).backbones == ("vgg16",)
    for name in HEAD_NAMES:
        assert resolve_head(name, has_tokens=True).build is not None
    with pytest.raises(FusionfeatError, match="--no-tokens"):
        resolve_head("attention-spatial", has_tokens=False)
    with pytest.raises(FusionfeatError, match="choose from resnet18, vgg16, concat"):
        resolve_head("resnet50", has_tokens=True)


def test_expand_head_names():
    assert expand_head_names("all") == list(HEAD_NAMES)
    assert expand_head_names("svm, attention-spatial,svm") == ["svm", "attention-spatial"]
    with pytest.raises(FusionfeatError, match="'foo'"):
        expand_head_names("svm,foo")
    with pytest.raises(FusionfeatError, match="unknown head"):
        expand_head_names(" , ")


# The float32 forward pass is not bit-identical across batch sizes (BLAS blocking), so outputs on a
# subset differ from the full batch in the 7th digit; the check demands 1e-7.
_SUBSET = {"check_methods_subset_invariance": "float32 matmuls differ in the last bits across batch sizes"}


_SVM_SUBSET = {
    "check_fit2d_1sample": "the Platt sigmoid's inner folds need two rows of each class: a one-line error names that, "
    "not scikit-learn's wording for one sample",
}


@parametrize_with_checks(
    [
        TorchHeadClassifier(hidden=16, max_epochs=10, lr=1e-2, random_state=0, device="cpu"),
        XGBoostClassifier(n_estimators=10, random_state=0),
        WeightedPlattSVC(max_exact_rows=None, random_state=0),
        WeightedPlattSVC(max_exact_rows=10, n_components=20, random_state=0),  # the Nystroem path
    ],
    expected_failed_checks=lambda est: _SUBSET if isinstance(est, TorchHeadClassifier) else _SVM_SUBSET
    if isinstance(est, WeightedPlattSVC) else {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_cross_attention_equals_multihead_attention_on_the_same_parameters():
    from fusionfeat.heads.modules import cross_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    query, context = torch.randn(3, 7, 32), torch.randn(3, 11, 32)
    expected = attn(query, context, context, need_weights=False)[0]
    torch.testing.assert_close(cross_attention(attn, query, context), expected, rtol=1e-5, atol=1e-6)


def test_block_input_pools_before_standardising_and_reads_float16_rows():
    from fusionfeat.heads.modules import BlockInput

    torch.manual_seed(0)
    inputs = BlockInput(((3, 4), (1, 2)))
    inputs.set_stats([torch.randn(4), torch.randn(2)], [torch.rand(4) + 0.5, torch.rand(2) + 0.5])
    x = torch.randn(5, 14).half()
    maps = inputs(x)
    assert all(m.dtype == torch.float32 for m in maps)
    torch.testing.assert_close(maps[0], (x[:, :12].float().reshape(5, 3, 4) - inputs.loc_0) / inputs.scale_0)
    for pooled, full in zip(inputs.pooled(x), maps, strict=True):
        torch.testing.assert_close(pooled, full.mean(dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("explicit", [True, False])
def test_both_cross_attention_paths_match_multihead_attention_in_outputs_and_gradients(explicit):
    from fusionfeat.heads.modules import cross_attention

    torch.manual_seed(1)
    attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    query = torch.randn(2, 5, 16, requires_grad=True)
    context = torch.randn(2, 9, 16, requires_grad=True)
    ours = cross_attention(attn, query, context, explicit=explicit)
    grads = torch.autograd.grad(ours.square().sum(), [query, context, attn.in_proj_weight, attn.out_proj.weight])
    reference = attn(query, context, context, need_weights=False)[0]
    expected = torch.autograd.grad(reference.square().sum(),
                                   [query, context, attn.in_proj_weight, attn.out_proj.weight])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_input_statistics_match_numpy_in_float64_despite_large_channel_means():
    from fusionfeat.heads.torch_head import block_stats

    rng = np.random.default_rng(0)
    n, blocks = 700, ((3, 4), (1, 2))  # more rows than one statistics chunk (256)
    means = np.array([1000.0, 2000.0, -500.0, 0.0])
    tokens = rng.normal(means, [1.0, 1.0, 3.0, 0.5], size=(n, 3, 4))
    pooled = rng.normal([10.0, -3.0], [2.0, 0.1], size=(n, 1, 2))
    X = np.concatenate([tokens.reshape(n, -1), pooled.reshape(n, -1)], axis=1).astype(np.float16)
    X.setflags(write=False)  # read-only input (a memory map, say) is fine
    locs, scales = block_stats(X, blocks)
    as64 = X.astype(np.float64)
    for (loc, scale), values in zip(zip(locs, scales, strict=True),
                                    (as64[:, :12].reshape(-1, 4), as64[:, 12:].reshape(-1, 2)), strict=True):
        np.testing.assert_allclose(loc.numpy(), values.mean(axis=0), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(scale.numpy(), values.std(axis=0), rtol=2e-3)


def test_input_statistics_refuse_values_beyond_float32():
    from fusionfeat.heads.torch_head import block_stats

    X = np.ones((10, 3))
    X[4, 1] = 1e300
    with pytest.raises(ValueError, match="float32"):
        block_stats(X, ((1, 3),))
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        block_stats(X, ((1, 3),))


@pytest.mark.parametrize("name, value", [("max_epochs", float("inf")), ("max_epochs", 2.5), ("batch_size", 0),
                                         ("patience", "3")])
def test_torch_head_whole_number_parameters_are_one_line_errors(name, value):
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(FusionfeatError, match=f"{name} must be a whole number >= 1"):
        TorchHeadClassifier(**{name: value}, device="cpu").fit(X, np.arange(20) % 2)
