"""scikit-learn classifiers over cached features: the torch heads and the classical baselines.

Every model here follows the scikit-learn contract (hyper-parameters only in ``__init__``, fitted state in
attributes ending in ``_``, ``clone`` works), so one cross-validation loop serves them all. ``X`` is a 2D
array whose columns are per-backbone blocks laid end to end (see ``fusionfeat.heads``); it may be a
float16 array of gigabytes, so the torch heads convert it to float32 one batch at a time.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import assert_all_finite, check_random_state
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from fusionfeat.calibration import inner_splits
from fusionfeat.errors import FusionfeatError
from fusionfeat.heads import AttentionFusion, Blocks, ConcatFusion, as_blocks
from fusionfeat.protocols import inner_split
from fusionfeat.runtime import autocast, head_precision, progress, resolve_device

ARCHITECTURES = ("mlp", "attention-spatial", "attention-pooled")
STATS_ROWS = 256  # rows per chunk when computing input statistics and predicting


def check_blocks(blocks: Sequence[Sequence[int]] | None, n_features: int) -> Blocks:
    """Resolve ``blocks`` against the column count; ``None`` means one pooled block of all columns."""
    if blocks is None:
        return ((1, n_features),)
    resolved = as_blocks(blocks)
    expected = sum(t * c for t, c in resolved)
    if expected != n_features:
        raise FusionfeatError(
            f"X has {n_features} feature columns but blocks={list(resolved)} describe {expected} "
            "(sum of n_tokens * dim); pass the blocks of the backbones X was read from, in column order"
        )
    return resolved


def _block_stats(X: np.ndarray, blocks: Blocks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-block, per-channel mean and std over samples and tokens, one chunk at a time (torch converts float16
    several times faster than numpy). Values are shifted by the first chunk's channel means before summing
    (float32 within a chunk, float64 across chunks), so a large mean does not cancel the variance away.

    Also the one pass that checks every value of ``X`` is finite (a NaN or infinity makes its chunk's sum
    non-finite, and scikit-learn's check then names it) and within float32's range.
    """
    sums = [torch.zeros(c, dtype=torch.float64) for _, c in blocks]
    sqs = [torch.zeros(c, dtype=torch.float64) for _, c in blocks]
    shifts: list[torch.Tensor] = []
    for start in range(0, X.shape[0], STATS_ROWS):
        raw = _host_rows(X, slice(start, start + STATS_ROWS))
        chunk = torch.from_numpy(raw).float()
        col = 0
        for i, (t, c) in enumerate(blocks):
            part = chunk[:, col : col + t * c].view(-1, t, c)  # a view: no copy of the block
            if len(shifts) <= i:
                shifts.append(part.mean(dim=(0, 1)))
            centred = part - shifts[i]
            total, square = centred.sum(dim=(0, 1)), centred.square().sum(dim=(0, 1))
            if not bool(torch.isfinite(total).all() and torch.isfinite(square).all()):
                assert_all_finite(raw, input_name="X")  # scikit-learn's message for the offending value
                raise ValueError("X has values beyond float32's range (about 3.4e38): the heads compute in float32")
            sums[i] += total.double()
            sqs[i] += square.double()
            col += t * c
    locs, scales = [], []
    for (t, _), s, q, shift in zip(blocks, sums, sqs, shifts, strict=True):
        n = X.shape[0] * t
        mean = s / n
        std = torch.sqrt(torch.clamp(q / n - mean**2, min=0.0))
        locs.append((shift.double() + mean).float())
        scales.append(torch.where(std > 1e-6, std, 1.0).float())
    return locs, scales


def build_module(
    architecture: str,
    blocks: Blocks,
    n_classes: int,
    hidden: int,
    dropout: float,
    attn_dim: int,
    attn_heads: int,
) -> nn.Module:
    """The torch module for one ``architecture`` name (see ``ARCHITECTURES``)."""
    if architecture == "mlp":
        return ConcatFusion(blocks, n_classes, hidden=hidden, dropout=dropout)
    if architecture in ("attention-spatial", "attention-pooled"):
        return AttentionFusion(
            blocks,
            n_classes,
            variant=architecture.split("-")[1],
            dim=attn_dim,
            n_heads=attn_heads,
            dropout=dropout,
            hidden=hidden,
        )
    raise FusionfeatError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")


def whole_number(name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    """A head's whole-number hyper-parameter as an int (``None`` kept when ``optional``); a one-line error for
    anything else (a fraction, infinity, a string, below ``minimum``) instead of truncating or tracing back."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or int(value) < minimum:
        also = " or none" if optional else ""
        raise FusionfeatError(f"{name} must be a whole number >= {minimum}{also}; got {value!r}")
    return int(value)


def _check_class_weight(class_weight: Any) -> None:
    if not (class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict)):
        raise FusionfeatError(
            f"class_weight must be 'balanced', None or a {{label: weight}} dict; got {class_weight!r}"
        )


def _weighted_fit_data(estimator: Any, X: Any, y: Any, dtype: tuple) -> tuple[np.ndarray, np.ndarray, Any]:
    """A classical head's ``fit`` inputs: validated ``X`` and ``y`` (their classes set as ``estimator.classes_``)
    and the per-row weights of its ``class_weight`` (None without one)."""
    _check_class_weight(estimator.class_weight)
    X, y = validate_data(estimator, X, y, dtype=dtype)
    check_classification_targets(y)
    estimator.classes_ = np.unique(y)
    weights = None if estimator.class_weight is None else compute_sample_weight(estimator.class_weight, y)
    return X, y, weights


def _is_attention(estimator: TorchHeadClassifier) -> bool:
    if not estimator.architecture.startswith("attention"):
        raise AttributeError(f"fusion_weights needs an attention architecture; this head is {estimator.architecture!r}")
    return True


def _is_spatial_attention(estimator: TorchHeadClassifier) -> bool:
    if estimator.architecture != "attention-spatial":
        raise AttributeError(f"attention_maps needs attention-spatial; this head is {estimator.architecture!r}")
    return True


class TorchHeadClassifier(ClassifierMixin, BaseEstimator):
    """A torch head (MLP, concatenation or attention fusion) trained as a scikit-learn classifier.

    ``blocks`` gives ``(n_tokens, dim)`` per backbone in column order (``None``: one pooled block);
    ``architecture`` is ``"mlp"`` (mean-pool each block, concatenate, MLP), ``"attention-spatial"`` or
    ``"attention-pooled"`` (see ``fusionfeat.heads.AttentionFusion``). Training: AdamW on (optionally
    class-weighted) cross-entropy, early stopping on an inner ``val_fraction`` split (grouped by ``groups``) with the
    best epoch's weights restored, bf16 autocast on CUDA. The same ``random_state`` gives identical
    probabilities on CPU; global torch RNG state is left as it was.

    Fitted attributes: ``module_``, ``classes_``, ``blocks_``, ``history_`` (one dict per epoch: epoch,
    train_loss, train_acc, val_loss, val_acc; the val entries are ``None`` without a validation split),
    ``best_epoch_``, ``n_features_in_``.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]] | None = None,
        architecture: str = "mlp",
        hidden: int = 512,
        dropout: float = 0.2,
        attn_dim: int = 128,
        attn_heads: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 64,
        max_epochs: int = 60,
        patience: int = 8,
        val_fraction: float = 0.15,
        class_weight: str | dict | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "auto",
        progress: bool = False,
    ):
        self.blocks = blocks
        self.architecture = architecture
        self.hidden = hidden
        self.dropout = dropout
        self.attn_dim = attn_dim
        self.attn_heads = attn_heads
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def _check_params(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise FusionfeatError(f"architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        _check_class_weight(self.class_weight)
        if not 0.0 <= self.val_fraction < 1.0:
            raise FusionfeatError(f"val_fraction must be in [0, 1); got {self.val_fraction!r}")
        for name in ("batch_size", "max_epochs", "patience"):
            whole_number(name, getattr(self, name), minimum=1)

    def _split(
        self, y: np.ndarray, groups: Any, rng: np.random.RandomState
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner train/validation indices (``fusionfeat.protocols.inner_split``: grouped by ``groups`` when
        given, else stratified); no validation when it is off or the rows cannot be split."""
        all_idx = np.arange(len(y))
        if self.val_fraction == 0:
            return all_idx, all_idx[:0]
        g = np.full(len(y), "") if groups is None else np.asarray(groups).astype(str).reshape(-1)
        if len(g) != len(y):
            raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} training rows")
        fit, val = inner_split(all_idx, y, g, self.val_fraction, int(rng.randint(np.iinfo(np.int32).max)))
        if len(val) == 0:
            warnings.warn(
                f"no validation split (too few rows or groups); training all {self.max_epochs} epochs without "
                "early stopping",
                UserWarning,
                stacklevel=3,
            )
        return fit, val

    def fit(self, X: Any, y: Any, groups: Any = None) -> TorchHeadClassifier:
        """Train on ``X`` (N, F) and labels ``y``; returns ``self``.

        ``groups`` (one id per row: subject, or source image for rotated copies) keeps each group on one side
        of the early-stopping validation split; without it the split is stratified by class only.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype="numeric", ensure_all_finite=False)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"training needs at least 2 classes; y has one class ({classes[0]!r})")
        blocks = check_blocks(self.blocks, X.shape[1])
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        train_idx, val_idx = self._split(y_enc, groups, rng)
        weight = None
        if self.class_weight is not None:
            per_class = compute_class_weight(self.class_weight, classes=classes, y=classes[y_enc[train_idx]])
            weight = torch.tensor(per_class, dtype=torch.float32, device=device)

        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            module = build_module(
                self.architecture,
                blocks,
                len(classes),
                self.hidden,
                self.dropout,
                self.attn_dim,
                self.attn_heads,
            )
            module.inputs.set_stats(*_block_stats(X, blocks))
            module.to(device)
            self.history_, self.best_epoch_ = self._train(module, X, y_enc, train_idx, val_idx, weight, rng)
        self.module_ = module.eval()
        self.classes_ = classes
        self.blocks_ = blocks
        return self

    def _train(
        self,
        module: nn.Module,
        X: np.ndarray,
        y: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        weight: torch.Tensor | None,
        rng: np.random.RandomState,
    ) -> tuple[list[dict], int]:
        """The epoch loop; leaves the best epoch's weights in ``module``."""
        device = next(module.parameters()).device
        precision = head_precision(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))  # one kernel: 3× faster step on CPU
        y_t = torch.as_tensor(y, device=device)
        history: list[dict] = []
        best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
        bar = progress(int(self.max_epochs), bool(self.progress), self.architecture, unit="epoch", leave=False)
        for epoch in range(1, int(self.max_epochs) + 1):
            module.train()
            order = rng.permutation(train_idx)
            loss_sum = correct = 0.0
            for start in range(0, len(order), int(self.batch_size)):
                idx = np.sort(order[start : start + int(self.batch_size)])
                with autocast(device, precision):
                    logits = module(_batch(X, idx, device))
                loss = nn.functional.cross_entropy(logits.float(), y_t[idx], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y_t[idx]).sum().item()
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / len(order),
                "train_acc": correct / len(order),
                "val_loss": None,
                "val_acc": None,
            }
            if len(val_idx):
                logits = _logits(module, X, val_idx, precision, check=False)
                row["val_loss"] = nn.functional.cross_entropy(logits, y_t[val_idx], weight=weight).item()
                row["val_acc"] = (logits.argmax(1) == y_t[val_idx]).float().mean().item()
            history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch" and v is not None})
            if not len(val_idx):
                best_epoch = epoch
                continue
            if row["val_loss"] < best_loss - 1e-4:
                best_loss, best_epoch, waited = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
                if waited >= int(self.patience):
                    break
        bar.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        return history, best_epoch

    def _all_logits(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=False)
        device = next(self.module_.parameters()).device
        return _logits(self.module_, X, np.arange(X.shape[0]), head_precision(device)).cpu().double()

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of ``classes_[1]`` (N,) for two classes; class logits (N, K) otherwise."""
        logits = self._all_logits(X).numpy()
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, K), columns in ``classes_`` order."""
        return torch.softmax(self._all_logits(X), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row."""
        best = self._all_logits(X).argmax(1).numpy()
        return self.classes_[best]

    @available_if(_is_attention)
    def fusion_weights(self, X: Any) -> np.ndarray:
        """Per-image contribution of each backbone (N, n_backbones), rows summing to 1."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=False)
        device = next(self.module_.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, X.shape[0], STATS_ROWS):
                idx = np.arange(start, min(start + STATS_ROWS, X.shape[0]))
                out.append(self.module_.fusion_weights(_batch(X, idx, device, check=True)).float().cpu())
        return torch.cat(out).double().numpy()

    @available_if(_is_spatial_attention)
    def attention_maps(self, X: Any) -> list[np.ndarray]:
        """Per backbone (column order), ``(N, T_k)``: the attention mass each token of backbone k's grid
        receives from the other backbones' queries (see ``AttentionFusion.attention_maps``)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=False)
        device = next(self.module_.parameters()).device
        parts: list[dict[int, torch.Tensor]] = []
        with torch.inference_mode():
            for start in range(0, X.shape[0], STATS_ROWS):
                idx = np.arange(start, min(start + STATS_ROWS, X.shape[0]))
                parts.append(self.module_.attention_maps(_batch(X, idx, device, check=True)))
        return [torch.cat([p[k].float().cpu() for p in parts]).double().numpy() for k in range(len(self.blocks_))]

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(config, state_dict)``: a JSON-able dict and the module's CPU tensors, for saving.

        Save ``config`` with ``json`` and ``state_dict`` with ``torch.save``; rebuild with
        ``TorchHeadClassifier.from_state(config, torch.load(path, weights_only=True))``.
        """
        check_is_fitted(self)
        params = self.get_params()
        params["blocks"] = [list(b) for b in self.blocks_]
        seed = params["random_state"]
        params["random_state"] = int(seed) if isinstance(seed, numbers.Integral) else None
        config = {
            "params": params,
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "best_epoch": int(self.best_epoch_),
            "history": self.history_,
        }
        state = {k: v.detach().cpu().clone() for k, v in self.module_.state_dict().items()}
        return config, state

    @classmethod
    def from_state(
        cls, config: dict[str, Any], state_dict: dict[str, torch.Tensor], device: str = "cpu"
    ) -> TorchHeadClassifier:
        """Rebuild a fitted classifier from :meth:`get_state`'s output, its module on ``device``."""
        est = cls(**{**config["params"], "device": device})
        blocks = check_blocks(est.blocks, int(config["n_features_in"]))
        classes = np.asarray(config["classes"])
        module = build_module(
            est.architecture, blocks, len(classes), est.hidden, est.dropout, est.attn_dim, est.attn_heads
        )
        module.load_state_dict(state_dict)
        est.module_ = module.to(resolve_device(device)).eval()
        est.classes_ = classes
        est.blocks_ = blocks
        est.n_features_in_ = int(config["n_features_in"])
        est.best_epoch_ = int(config["best_epoch"])
        est.history_ = list(config["history"])
        return est


def _host_rows(X: np.ndarray, rows: Any) -> np.ndarray:
    """``X[rows]`` as a C-contiguous array torch may wrap (a copy when ``X`` is read-only, e.g. a memory map)."""
    out = np.ascontiguousarray(X[rows])
    return out if out.flags.writeable else out.copy()


def _batch(X: np.ndarray, idx: np.ndarray, device: torch.device, check: bool = False) -> torch.Tensor:
    """Rows ``idx`` of ``X`` as a tensor on ``device``: float16 rows stay float16 (half the bytes to move; the
    module's ``BlockInput`` converts them, pooling first where it can), any other dtype becomes float32."""
    batch = _host_rows(X, idx)
    if check:
        assert_all_finite(batch, input_name="X")
    tensor = torch.from_numpy(batch)
    if tensor.dtype != torch.float16:
        tensor = tensor.float()  # on the host: a float64 or integer X travels as float32, not wider
    return tensor.to(device, non_blocking=True)


def _logits(module: nn.Module, X: np.ndarray, idx: np.ndarray, precision: str, check: bool = True) -> torch.Tensor:
    """Eval-mode float32 logits for rows ``idx``, in chunks; restores the module's train/eval mode. ``check``
    refuses non-finite rows (off for the validation rows of ``fit``, which checked all of X once)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = []
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(idx), STATS_ROWS):
            out.append(module(_batch(X, idx[start : start + STATS_ROWS], device, check=check)).float())
    module.train(was_training)
    return torch.cat(out)


class XGBoostClassifier(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost ``hist``); ``class_weight`` ("balanced" or a dict) becomes sample weights.

    Fitted attributes: ``model_`` (the ``xgboost.XGBClassifier``), ``classes_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        colsample_bytree: float = 0.5,
        class_weight: str | dict | None = None,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> XGBoostClassifier:
        """Fit the trees; returns ``self``."""
        from xgboost import XGBClassifier

        X, y, weights = _weighted_fit_data(self, X, y, (np.float32, np.float64))
        y_enc = np.unique(y, return_inverse=True)[1]
        if len(self.classes_) < 2:
            raise ValueError(f"training needs at least 2 classes; y has one class ({self.classes_[0]!r})")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            tree_method="hist",
            n_jobs=self.n_jobs if self.n_jobs is not None else torch.get_num_threads(),  # runtime.head_threads
            random_state=seed,
            verbosity=0,
        ).fit(X, y_enc, sample_weight=weights)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, K), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float32, np.float64), reset=False)
        return self.model_.predict_proba(X).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]


class WeightedPlattSVC(ClassifierMixin, BaseEstimator):
    """RBF SVC whose Platt sigmoid is fitted under the same class weights as the SVC.

    ``class_weight`` ("balanced" or a dict) becomes per-row sample weights given to the SVC *and* to the
    sigmoid (``CalibratedClassifierCV(..., method="sigmoid", cv=cv, ensemble=False)`` routes them to both),
    so the probabilities keep the weighting instead of pulling back towards the majority class. The sigmoid
    is monotone: ``predict_proba[:, 1]`` ranks as the SVC's decision values.

    An exact kernel SVC costs about O(N²) in the training rows (≈ 27 s at 4,000 rows of 1024 features, one
    thread, and five sigmoid fits more), so past ``max_exact_rows`` training rows (``None``: always exact)
    the RBF kernel is approximated: a ``Nystroem`` map (``n_components`` landmarks, the gamma the exact SVC
    would use) fitted on the training rows, then a ``LinearSVC`` with the same ``C``, class weights and
    sigmoid folds.

    Fitted attributes: ``calibrated_``, ``approximation_`` (the fitted ``Nystroem``; ``None`` when exact),
    ``kernel_`` (``"rbf"`` or ``"rbf-nystroem(K)"``), ``classes_``, ``n_features_in_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        gamma: str | float = "scale",
        class_weight: str | dict | None = None,
        cv: int = 5,
        random_state: int | None = None,
        max_exact_rows: int | None = 5000,
        n_components: int = 1000,
    ):
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.cv = cv
        self.random_state = random_state
        self.max_exact_rows = max_exact_rows
        self.n_components = n_components

    def fit(self, X: Any, y: Any, groups: Any = None) -> WeightedPlattSVC:
        """Fit SVC and sigmoid with the class weights as sample weights; returns ``self``.

        Without ``groups`` the sigmoid's inner folds are scikit-learn's ``cv``-fold stratified split. With
        ``groups`` (subject, else source-image ids; ``""`` a row of its own) they are grouped
        (``calibration.inner_splits``: StratifiedGroupKFold, shuffled by ``random_state``), so neither a
        subject's other cells nor a rotated copy of a row score it for the sigmoid."""
        max_exact = whole_number("the SVM's max_exact_rows", self.max_exact_rows, minimum=0, optional=True)
        n_components = whole_number("the SVM's n_components", self.n_components, minimum=1)
        X, y, weights = _weighted_fit_data(self, X, y, (np.float64, np.float32))
        cv: Any = self._ungrouped_cv(y)
        if groups is not None:
            cv = self._grouped_splits(y, groups, cv)
        if max_exact is None or X.shape[0] <= max_exact:
            svc = SVC(kernel="rbf", C=self.C, gamma=self.gamma, random_state=self.random_state)
            calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False)
            self.calibrated_ = calibrated.fit(X, y, sample_weight=weights)
            self.approximation_, self.kernel_ = None, "rbf"
            return self
        seed = 0 if self.random_state is None else self.random_state
        k = min(n_components, X.shape[0])
        self.approximation_ = Nystroem(kernel="rbf", gamma=rbf_gamma(X, self.gamma), n_components=k,
                                       random_state=seed).fit(X)
        self.kernel_ = f"rbf-nystroem({k})"
        linear = LinearSVC(C=self.C, dual="auto", max_iter=10000, random_state=seed)
        calibrated = CalibratedClassifierCV(linear, method="sigmoid", cv=cv, ensemble=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.calibrated_ = calibrated.fit(self.approximation_.transform(X), y, sample_weight=weights)
        _rewarn(caught)
        return self

    def _features(self, X: Any) -> np.ndarray:
        """Validated ``X``, through the Nystroem map when the approximation was fitted."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        approximation = getattr(self, "approximation_", None)  # absent in bundles saved before it existed
        return X if approximation is None else approximation.transform(X)

    def _ungrouped_cv(self, y: np.ndarray) -> int:
        """``cv`` folds, or fewer when the rarer class has fewer training rows (a tiny fold); refused below 2."""
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        if smallest < 2:
            raise FusionfeatError(f"the SVM's Platt sigmoid needs at least 2 training images of each class; a "
                                  f"training fold has {smallest}: use fewer folds or more images")
        return min(int(self.cv), smallest)

    def _grouped_splits(self, y: np.ndarray, groups: Any, fallback: int) -> Any:
        """Grouped inner folds for the sigmoid: at most as many as the rarer class has groups, and every
        training part holding both classes; else (too few groups) scikit-learn's ``cv`` as without groups."""
        g = np.asarray(groups).astype(str).reshape(-1)
        if len(g) != len(y):
            raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} training rows")
        units = np.where(g == "", np.char.add("\0row-", np.arange(len(g)).astype(str)), g)
        per_class = [len(np.unique(units[y == c])) for c in np.unique(y)]
        n_splits = min(int(self.cv), *per_class)
        if n_splits < 2:
            return fallback
        seed = 0 if self.random_state is None else self.random_state
        try:
            splits = inner_splits(y, g, n_splits, seed)
        except FusionfeatError:
            return fallback
        if any(len(np.unique(y[train])) < 2 for train, _ in splits):
            return fallback
        return splits

    def decision_function(self, X: Any) -> np.ndarray:
        """The SVC's (or, approximated, the LinearSVC's) decision values."""
        features = self._features(X)  # checks it is fitted first
        return self.calibrated_.calibrated_classifiers_[0].estimator.decision_function(features)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Weighted-Platt class probabilities (N, 2), columns in ``classes_`` order."""
        features = self._features(X)  # checks it is fitted first
        return self.calibrated_.predict_proba(features)

    def predict(self, X: Any) -> np.ndarray:
        """The more probable class."""
        proba = self.predict_proba(X)  # checks it is fitted first
        return self.classes_[proba.argmax(axis=1)]


def rbf_gamma(X: np.ndarray, gamma: str | float) -> float:
    """The RBF gamma ``SVC(gamma=gamma)`` would use on ``X``: ``"scale"`` is 1 / (n_features · X.var()) over
    ``X`` as float64 (as SVC converts it), 1 when that variance is 0; ``"auto"`` is 1 / n_features."""
    if gamma == "scale":
        var = float(np.asarray(X, dtype=np.float64).var())
        return 1.0 / (X.shape[1] * var) if var != 0 else 1.0
    if gamma == "auto":
        return 1.0 / X.shape[1]
    return float(gamma)


def _rewarn(caught: list[warnings.WarningMessage]) -> None:
    """Re-emit recorded warnings, the LinearSVC's convergence warnings (one per sigmoid fold) as one."""
    converge = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn(w.message, w.category, stacklevel=3)
    if converge:
        warnings.warn(f"the approximate SVM's LinearSVC did not converge in {len(converge)} of its fits "
                      f"({str(converge[0].message).splitlines()[0]})", ConvergenceWarning, stacklevel=3)


def make_svm(class_weight: str | None = None, random_state: int | None = None) -> Pipeline:
    """StandardScaler → RBF SVC with class-weighted Platt probabilities (``WeightedPlattSVC``: sigmoid,
    5-fold, one final SVC, the class weights given to both SVC and sigmoid).

    The calibration is monotone, so ``predict_proba[:, 1]`` ranks exactly as the SVC's decision values
    (AUC is unchanged). The pipeline is deterministic; ``random_state`` is passed to SVC for uniformity.
    Past 5000 training rows the kernel is approximated (``WeightedPlattSVC.max_exact_rows``; ``None``: exact).
    """
    return make_pipeline(StandardScaler(), WeightedPlattSVC(class_weight=class_weight, random_state=random_state))


def make_logreg(class_weight: str | None = None, random_state: int | None = None, C: float = 1.0) -> Pipeline:
    """StandardScaler → L2 logistic regression (lbfgs, up to 5000 iterations)."""
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, random_state=random_state, max_iter=5000),
    )
