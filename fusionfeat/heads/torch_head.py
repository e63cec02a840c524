"""``TorchHeadClassifier``: a torch head (MLP, concatenation or attention fusion) as a scikit-learn classifier.

It follows the scikit-learn contract (hyper-parameters only in ``__init__``, fitted state in attributes
ending in ``_``, ``clone`` works), so one cross-validation loop serves it and the classical heads alike. ``X``
is a 2D array whose columns are per-backbone blocks laid end to end (see ``fusionfeat.heads.modules``); it
may be a float16 array of gigabytes, so it is converted to float32 one batch at a time.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.modules import AttentionFusion, Blocks, ConcatFusion, as_blocks
from fusionfeat.heads.params import check_class_weight, finite_in, whole_number
from fusionfeat.heads.torch_training import STATS_ROWS, block_stats, eval_logits, rows_tensor, train_epochs
from fusionfeat.protocols import inner_split
from fusionfeat.runtime import head_precision, resolve_device

ARCHITECTURES = ("mlp", "attention-spatial", "attention-pooled")


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
    ``"attention-pooled"`` (see ``fusionfeat.heads.modules.AttentionFusion``). Training: AdamW on (optionally
    class-weighted) cross-entropy, early stopping on an inner ``val_fraction`` split (grouped by ``groups``) with the
    best epoch's weights restored, bf16 autocast on CUDA. The same ``random_state`` gives identical
    probabilities on CPU; global torch RNG state is left as it was. ``progress``: report the epochs
    (``fusionfeat.progress``); a string turns it on and names them (the head's name; default the architecture).

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
        progress: bool | str = False,
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
        check_class_weight(self.class_weight)
        if not 0.0 <= self.val_fraction < 1.0:
            raise FusionfeatError(f"val_fraction must be in [0, 1); got {self.val_fraction!r}")
        for name in ("batch_size", "max_epochs", "patience", "hidden", "attn_dim", "attn_heads"):
            whole_number(name, getattr(self, name), minimum=1)
        for name, high, low_open in (("lr", math.inf, True), ("weight_decay", math.inf, False),
                                     ("dropout", 1.0, False)):
            finite_in(name, getattr(self, name), 0.0, high, low_open=low_open, high_open=True)

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
            module.inputs.set_stats(*block_stats(X, blocks))
            module.to(device)
            self.history_, self.best_epoch_ = train_epochs(
                module, X, y_enc, train_idx, val_idx, weight, rng, lr=self.lr, weight_decay=self.weight_decay,
                batch_size=int(self.batch_size), max_epochs=int(self.max_epochs), patience=int(self.patience),
                label=self.progress if isinstance(self.progress, str) else self.architecture,
                show_progress=bool(self.progress),
            )
        self.module_ = module.eval()
        self.classes_ = classes
        self.blocks_ = blocks
        return self

    def _all_logits(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=False)
        device = next(self.module_.parameters()).device
        return eval_logits(self.module_, X, np.arange(X.shape[0]), head_precision(device)).cpu().double()

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
                out.append(self.module_.fusion_weights(rows_tensor(X, idx, device, check=True)).float().cpu())
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
                parts.append(self.module_.attention_maps(rows_tensor(X, idx, device, check=True)))
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
