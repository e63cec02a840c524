"""Cross-validation of heads on cached features: one loop for every head, and its result.

The splits come from ``fusionfeat.protocols`` (made and leakage-checked before any fit); each fold fits
``sklearn.base.clone`` of the head's estimator on X read once from the store. See ``docs/protocols.md``.
"""

from __future__ import annotations

import math
import os
import reprlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from fusionfeat import runtime
from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.evaluation import metrics as fm
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.row_layout import RowLayout
from fusionfeat.heads.calibration import (
    METHODS,
    CalibratedHead,
    InnerOperatingPoint,
    fit_estimator,
    parse_operating_point,
)
from fusionfeat.heads.inputs import head_blocks, rows_matrix
from fusionfeat.heads.options import recorded_params, resolve_head_params
from fusionfeat.heads.zoo import HeadSpec, resolve_heads
from fusionfeat.protocols import (
    BALANCES,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    Split,
    SplitPlan,
    check_choice,
    default_protocol,
    image_groups,
    make_plan,
)
from fusionfeat.runtime import head_threads
from fusionfeat.stats import AGGREGATIONS
from fusionfeat.store import FeatureStore, FoldPlan
from fusionfeat.store.reader import accepts_store
from fusionfeat.store.schema import classes_spec
from fusionfeat.store.selection import selection_mapping

FEATURES: tuple[str, ...] = ("frozen", "finetuned")


@dataclass
class FoldResult:
    """One fitted head on one split: its metrics, curves, counts and (torch) training history."""

    head: str
    repeat: int
    fold: int
    metrics: dict[str, float]
    confusion: list[list[int]]
    roc: dict[str, list[float]]
    n_train: int
    n_test: int
    history: list[dict[str, float]] | None = None
    fusion_weights: dict[str, dict[str, float]] | None = None
    n_train_images: int | None = None  # evaluated images among the training rows (no augmentation copies)
    threshold: float | None = None  # operating-point threshold on P(positive), chosen on the training fold
    inner_rates: dict[str, float] | None = None  # inner out-of-fold sensitivity/specificity at ``threshold``
    kernel: str | None = None  # the SVM's kernel as fitted: "rbf", or "rbf-nystroem(K)" past its max_exact_rows
    per_class: dict[str, list[float]] | None = None  # K > 2: precision, recall, f1, support, roc_auc per class


@dataclass
class CVResult:
    """Everything a cross-validation run produced; ``write_run`` turns it into a run folder."""

    heads: list[str]
    head_info: dict[str, dict[str, Any]]
    classes: list[str]
    positive: str | None  # None when there are more than two classes
    protocol: dict[str, Any]
    provenance: dict[str, Any]
    features: str
    rows: dict[str, np.ndarray]  # sample, view, path, label, group of the evaluation rows
    test_fold: np.ndarray  # (repeats, n_eval)
    # two classes: head -> (repeats, n_eval) out-of-fold P(positive); more than two: empty (no class is positive;
    # read ``oof_proba``), so no binary computation can run on it by mistake
    oof: dict[str, np.ndarray]
    # two classes: head -> (repeats, n_eval) 1.0 = predicted positive; more: the predicted class index (as a float);
    # NaN where a row was not scored in that repeat
    oof_pred: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # calibrate, operating_point, subject_aggregate, head_params
    oof_weights: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (repeats, n_eval, n_weights)
    weight_names: dict[str, list[str]] = field(default_factory=dict)
    folds: list[FoldResult] = field(default_factory=list)
    # head -> per backbone (repeats, n_eval, T_k) out-of-fold attention maps (attention-spatial heads only)
    oof_attention: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # head -> (repeats, n_eval, K) out-of-fold probability of every class, columns in ``classes`` order (NaN where
    # unscored); rows sum to 1. Two classes: ``[1 - p, p]`` placed by class order, ``p`` = ``oof``'s value
    oof_proba: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def multiclass(self) -> bool:
        """Whether the run has more than two classes (K-class metrics, no positive class)."""
        return len(self.classes) > 2

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The per-fold metrics of this run: the binary ``metrics.METRICS`` or the K-class
        ``multiclass_metrics.METRICS``."""
        return mm.METRICS if self.multiclass else fm.METRICS

    def fold_results(self, head: str) -> list[FoldResult]:
        """The fold results of one head, in (repeat, fold) order."""
        return [f for f in self.folds if f.head == head]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """head -> metric -> per-fold mean and sd over folds × repeats, counts (intervals:
        ``fusionfeat.evaluation.evidence``)."""
        names = mm.METRICS if self.multiclass else None
        return {
            head: fm.summarize(
                [f.metrics for f in self.fold_results(head)], [f.repeat for f in self.fold_results(head)], names
            )
            for head in self.heads
        }

    def to_frame(self) -> Any:
        """One row per head × repeat × fold (pandas DataFrame): head, repeat, fold, n_train, n_test (rows fitted
        and scored, copies included), then every metric of ``fm.METRICS`` and the fit/predict times in seconds."""
        import pandas as pd

        columns = ["head", "repeat", "fold", "n_train", "n_test", *self.metric_names, *fm.TIMINGS]
        records = [
            [f.head, f.repeat, f.fold, f.n_train, f.n_test, *[f.metrics.get(m, math.nan) for m in columns[5:]]]
            for f in self.folds
        ]
        return pd.DataFrame(records, columns=columns)

    def metrics_table(self) -> Any:
        """One row per head (pandas DataFrame indexed by head), as report.md's Table 1: ``<metric>_mean`` and
        ``<metric>_sd`` (per-fold mean and sample sd over folds × repeats) for every metric, and ``n_fits``."""
        import pandas as pd

        summary = self.summary()
        records = []
        for head in self.heads:
            row: dict[str, Any] = {"head": head}
            for m in self.metric_names:
                row[f"{m}_mean"] = summary[head][m]["mean"]
                row[f"{m}_sd"] = summary[head][m]["std"]
            row["n_fits"] = len(self.fold_results(head))
            records.append(row)
        return pd.DataFrame(records).set_index("head")

    def predictions_frame(self) -> Any:
        """Out-of-fold predictions (pandas DataFrame), one row per head × repeat × evaluated row: head, repeat, fold
        (the test fold that scored the row), sample (store index), view, path, group, label (true class), proba
        (out-of-fold P(positive class), ``self.positive``) and predicted (the class the head chose). With more than
        two classes ``proba`` is replaced by one column ``p_<class>`` per class (summing to 1 on a scored row)."""
        import pandas as pd

        if self.multiclass:
            return self._multiclass_predictions_frame()
        rows = self.rows
        n_repeats = self.test_fold.shape[0]
        negative = next(c for c in self.classes if c != self.positive)
        labels = np.asarray(self.classes, dtype=object)[rows["label"]]
        frames = []
        for head in self.heads:
            pred = self.oof_pred[head]
            frames.append(pd.DataFrame({
                **self._row_columns(head),
                "label": np.tile(labels, n_repeats),
                "proba": self.oof[head].reshape(-1),
                "predicted": np.where(np.isnan(pred), None, np.where(pred >= 0.5, self.positive, negative)).reshape(-1),
            }))
        return pd.concat(frames, ignore_index=True)

    def _row_columns(self, head: str) -> dict[str, Any]:
        """The columns every predictions frame starts with: head, repeat, fold, sample, view, path, group."""
        rows = self.rows
        n_repeats, n_eval = self.test_fold.shape
        return {"head": head, "repeat": np.repeat(np.arange(n_repeats), n_eval), "fold": self.test_fold.reshape(-1),
                **{k: np.tile(rows[k], n_repeats) for k in ("sample", "view", "path", "group")}}

    def _multiclass_predictions_frame(self) -> Any:
        import pandas as pd

        rows = self.rows
        n_repeats = self.test_fold.shape[0]
        names = np.asarray(self.classes, dtype=object)
        frames = []
        for head in self.heads:
            pred = self.oof_pred[head].reshape(-1)
            scored = ~np.isnan(pred)
            predicted = np.full(pred.shape, None, dtype=object)
            predicted[scored] = names[pred[scored].astype(np.int64)]
            proba = self.oof_proba[head].reshape(-1, len(self.classes))
            frames.append(pd.DataFrame({
                **self._row_columns(head),
                "label": np.tile(names[rows["label"]], n_repeats),
                **{f"p_{c}": proba[:, k] for k, c in enumerate(self.classes)},
                "predicted": predicted,
            }))
        return pd.concat(frames, ignore_index=True)

    def fusion_weights(self) -> dict[str, dict[str, dict[str, float]]]:
        """head -> true class -> weight name -> mean out-of-fold fusion weight (attention heads only)."""
        out = {}
        for head, w in self.oof_weights.items():
            labels = self.rows["label"]
            out[head] = {
                cls: dict(zip(self.weight_names[head], _class_mean(w, labels == c), strict=True))
                for c, cls in enumerate(self.classes)
                if np.any(labels == c)
            }
        return out


def _class_mean(w: np.ndarray, of_class: np.ndarray) -> list[float]:
    return np.nanmean(w[:, of_class].reshape(-1, w.shape[2]), axis=0).tolist()


@accepts_store
def cross_validate(
    store: str | os.PathLike | FeatureStore,
    heads: str | HeadSpec | Sequence[str | HeadSpec],
    protocol: str | None = None,
    folds: int | None = None,
    seed: int | None = None,
    repeats: int = 1,
    balance: str = "weight",
    features: str = "frozen",
    device: str = "auto",
    positive: str | None = None,
    progress: bool = True,
    backbones: str | Sequence[str] | None = None,
    head_params: dict[str, dict[str, Any]] | None = None,
    calibrate: str | None = None,
    operating_point: str | None = None,
    subject_aggregate: str = "mean",
) -> CVResult:
    """Cross-validate heads on a store's cached features under one protocol; one loop for every head.

    ``store`` is a store's path (opened for the call, then closed) or an open ``FeatureStore``. The result's
    ``to_frame()``, ``metrics_table()`` and ``predictions_frame()`` give pandas DataFrames (``docs/api.md``).

    ``protocol=None`` means ``grouped`` when subjects are known, else ``stratified``. ``folds``/``seed``
    default to 5 and 0, or, with ``features="finetuned"``, to the stored fine-tuning plan (which any
    other request contradicts). ``heads`` are names (see ``fusionfeat.heads.zoo``) or ``HeadSpec``s; the named
    fusion heads and baselines read ``backbones`` (default: every stored backbone, in store order).
    Each fold fits ``sklearn.base.clone`` of the head's estimator.

    ``head_params``: head name (or ``"*"``) -> parameter -> value, set on the heads' estimators (unknown
    names are refused, listing the valid ones). ``calibrate`` (``sigmoid``/``isotonic``) wraps each head in
    ``CalibratedHead``; ``operating_point`` (``"sens=0.95"``/``"spec=0.9"``) in ``InnerOperatingPoint``: both
    are fitted on the training fold only. ``subject_aggregate`` is recorded for the subject-level analysis.
    """
    heads = _head_list(heads)
    check_choice("balance", balance, BALANCES)
    if calibrate is not None:
        check_choice("calibrate", calibrate, METHODS)
    check_choice("subject-aggregate", subject_aggregate, AGGREGATIONS)
    target = parse_operating_point(operating_point) if operating_point else None
    check_choice("features", features, FEATURES)
    classes = [str(c) for c in store.classes]
    positive = _positive_class(classes, positive, store.positive_class, operating_point)
    if positive is None and subject_aggregate != "mean":
        raise FusionfeatError(f"--subject-aggregate {subject_aggregate} is binary only; with {len(classes)} classes a "
                              "subject's class is the one with the highest mean probability: leave it out")
    specs = resolve_heads(store, heads, features, backbones)
    plan, fixed = _plan_for_store(store, protocol, folds, seed, repeats, balance, features)
    labels = np.asarray(store.labels, dtype=np.int64)
    if len(np.unique(labels[plan.rows.sample[: plan.n_eval]])) < 2:
        raise FusionfeatError("the store holds a single class among usable images: nothing to classify")
    if features == "finetuned":
        _check_finetuned_features(store, specs, plan)
    params = resolve_head_params(specs, head_params or {})
    result = _empty_result(store, specs, plan, classes, positive, features, fixed)
    result.options = {
        "calibrate": calibrate,
        "operating_point": operating_point,
        "operating_target": target,
        "subject_aggregate": subject_aggregate,
        "head_params": {k: dict(v) for k, v in (head_params or {}).items()},
    }
    groups = image_groups(np.asarray(store.groups).astype(str)[plan.rows.sample], plan.rows.sample)
    bar = runtime.progress(len(specs) * len(plan.splits), progress, "cross-validation", unit="fit")
    try:
        for spec in specs:
            _run_head(
                store,
                spec,
                plan,
                labels,
                -1 if positive is None else classes.index(positive),
                balance,
                features,
                device,
                progress,
                result,
                bar,
                params[spec.name],
                groups,
            )
    finally:
        bar.close()
    return result


def _positive_class(classes: list[str], positive: str | None, stored: str | None,
                    operating_point: str | None) -> str | None:
    """The positive class of a binary run (``positive`` or the store's); None for more than two classes, where
    ``--positive`` and ``--operating-point`` have no meaning and are refused."""
    if len(classes) > 2:
        if positive is not None:
            raise FusionfeatError(f"--positive is binary only; this store has {len(classes)} classes "
                                  f"({', '.join(classes)}): leave --positive out")
        if operating_point:
            raise FusionfeatError(f"--operating-point is binary only; this store has {len(classes)} classes "
                                  f"({', '.join(classes)}): leave --operating-point out (the predicted class is "
                                  "the most probable one)")
        return None
    if len(classes) != 2:
        raise FusionfeatError(f"fusionfeat needs at least two classes; the store has {classes}")
    positive = positive if positive is not None else str(stored)
    if positive not in classes:
        raise FusionfeatError(f"positive class {positive!r} is not in the store's classes {classes}")
    return positive


def _head_list(heads: Any) -> list[str | HeadSpec]:
    """``heads`` as a list: a name (``"logreg"``, ``"logreg,svm"``, ``"all"``), a ``HeadSpec``, or a list of them."""
    if isinstance(heads, (str, HeadSpec)):
        return [heads]
    if isinstance(heads, (list, tuple)) and all(isinstance(h, (str, HeadSpec)) for h in heads):
        return list(heads)
    raise FusionfeatError(f"heads: give head names (e.g. ['logreg', 'svm'] or 'all') or HeadSpecs; got "
                          f"{reprlib.repr(heads)}")


def _plan_for_store(
    store: Any,
    protocol: str | None,
    folds: int | None,
    seed: int | None,
    repeats: int,
    balance: str,
    features: str,
) -> tuple[SplitPlan, FoldPlan | None]:
    ok = np.asarray(store.ok, dtype=bool)
    if not ok.any():
        raise FusionfeatError(f"{getattr(store, 'path', 'the feature store')} has no usable images (all skipped)")
    fixed = _finetuned_plan(store, protocol, folds, seed, repeats) if features == "finetuned" else None
    defaulted = protocol is None and fixed is None
    if fixed is not None:
        protocol, folds, seed = fixed.protocol, fixed.n_folds, fixed.seed
    protocol = protocol or default_protocol(store.groups, ok)
    if protocol == "predefined" and np.all(np.asarray(store.folds)[ok] < 0):
        raise FusionfeatError(
            "--cv predefined needs the dataset's own folds, but this store has none (all -1): "
            "use --cv grouped or stratified"
        )
    plan = make_plan(
        store.labels,
        store.groups,
        store.folds,
        ok,
        int(store.n_views),
        protocol=protocol,
        n_folds=DEFAULT_FOLDS if folds is None else int(folds),
        seed=DEFAULT_SEED if seed is None else int(seed),
        repeats=repeats,
        balance=balance,
        fixed_folds=None if fixed is None else np.where(ok, fixed.fold, -1),
        sha256=getattr(store, "sha256", None),
        class_names=[str(c) for c in store.classes],
    )
    plan.protocol["defaulted"] = defaulted
    return plan, fixed


def _finetuned_plan(
    store: Any, protocol: str | None, folds: int | None, seed: int | None, repeats: int
) -> FoldPlan:
    """The stored fine-tuning plan; any request that contradicts it would leak, so it is refused."""
    plan = store.fold_plan()
    if plan is None:
        raise FusionfeatError("--features finetuned: this store has no fine-tuned features (run fusionfeat finetune)")
    requested = {"protocol": ("--cv", protocol), "n_folds": ("--folds", folds), "seed": ("--seed", seed)}
    for key, (flag, value) in requested.items():
        if value is not None and value != getattr(plan, key):
            raise FusionfeatError(
                f"--features finetuned: the backbones were fine-tuned with {flag} {getattr(plan, key)}; evaluating "
                f"with {flag} {value} would test on images a backbone was trained on. Leave {flag} out, "
                "or fine-tune again with it"
            )
    if repeats != 1:
        raise FusionfeatError("--features finetuned supports --repeats 1 only (one fine-tuning per fold)")
    wanted = selection_mapping(store)
    if plan.classes != wanted:
        tuned = f"--classes {classes_spec(plan.classes)}" if plan.classes else "every class of the store"
        asked = f"--classes {classes_spec(wanted)}" if wanted else "every class of the store"
        raise FusionfeatError(
            f"--features finetuned: the backbones were fine-tuned on {tuned}; this run asks for {asked}, whose "
            "labels (and left-out images) they were not trained for. Fit with the fine-tuning's classes, or "
            "fine-tune again with yours (fusionfeat finetune --classes … --overwrite)"
        )
    fold = plan.fold
    have = set(int(k) for k in store.finetuned_folds())
    missing = sorted(set(np.unique(fold[fold >= 0]).tolist()) - have)
    if missing:
        raise FusionfeatError(f"--features finetuned: folds {missing} are not fine-tuned yet (run fusionfeat finetune)")
    return plan


def _empty_result(
    store: Any,
    specs: list[Any],
    plan: SplitPlan,
    classes: list[str],
    positive: str | None,
    features: str,
    fixed: FoldPlan | None,
) -> CVResult:
    sample = plan.rows.sample[: plan.n_eval]
    provenance = dict(store.provenance())
    if fixed is not None:
        provenance["fine_tuning_plan"] = {k: getattr(fixed, k) for k in ("protocol", "n_folds", "seed")}
    protocol = dict(plan.protocol, features=features, positive=positive)
    return CVResult(
        heads=[s.name for s in specs],
        head_info={
            s.name: {"backbones": list(s.backbones), "inputs": s.inputs, "is_torch": bool(s.is_torch)} for s in specs
        },
        classes=classes,
        positive=positive,
        protocol=protocol,
        provenance=provenance,
        features=features,
        rows={
            "sample": sample,
            "view": plan.rows.view[: plan.n_eval],
            "path": np.asarray(store.paths).astype(str)[sample],
            "label": np.asarray(store.labels, dtype=np.int64)[sample],
            "group": np.asarray(store.groups).astype(str)[sample],
        },
        test_fold=plan.test_fold,
        oof={} if positive is None else {s.name: np.full(plan.test_fold.shape, np.nan) for s in specs},
        oof_pred={s.name: np.full(plan.test_fold.shape, np.nan) for s in specs},
        oof_proba={s.name: np.full(plan.test_fold.shape + (len(classes),), np.nan) for s in specs},
    )


def _run_head(
    store: Any,
    spec: Any,
    plan: SplitPlan,
    labels: np.ndarray,
    pos: int,
    balance: str,
    features: str,
    device: str,
    progress: bool,
    result: CVResult,
    bar: Any,
    params: dict[str, Any],
    groups: np.ndarray,
) -> None:
    """Fit and score one head on every split, filling ``result``."""
    y = labels[plan.rows.sample]
    finetuned = features == "finetuned"
    blocks = head_blocks(store, spec, plan.splits[0].fold if finetuned else None)
    X = None if finetuned else rows_matrix(store, spec, plan.rows)  # read once, shared by every split
    layout = None if X is None else RowLayout(len(X))
    templates: dict[int, Any] = {}
    repeats = len({s.repeat for s in plan.splits})
    for split in plan.splits:
        bar.set_postfix_str(f"{spec.name} fold {split.fold}" + (f" repeat {split.repeat}" if repeats > 1 else ""))
        if split.repeat not in templates:
            templates[split.repeat] = spec.build(
                blocks=blocks,
                class_weight="balanced" if balance == "weight" else None,
                random_state=_seed_of(plan) + split.repeat,
                device=device,
                progress=spec.name if progress else False,  # the epochs are reported under the head's name
            ).set_params(**params)
            result.head_info[spec.name]["params"] = recorded_params(templates[split.repeat])
            templates[split.repeat] = _wrap(templates[split.repeat], result.options, pos, _seed_of(plan) + split.repeat)
        if finetuned:
            X_fold = rows_matrix(store, spec, plan.rows, fold=split.fold)
            X_train, X_test = RowLayout(len(X_fold)).arrange(X_fold, split)
        else:
            X_train, X_test = layout.arrange(X, split)
        est = clone(templates[split.repeat])
        try:
            with head_threads():  # 1 CPU thread unless the caller chose (fit --threads)
                result.folds.append(_fit_fold(est, spec, X_train, X_test, y, groups, split, pos, plan.n_eval,
                                              result))
        except (ValueError, TypeError) as err:
            if not params:  # not a user's value: a bug, keep the traceback
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FusionfeatError(
                f"head {spec.name!r} failed with --head-param {params}: {first}; fix or drop that value"
            ) from None
        bar.update(1)
    bar.stage(_head_summary(spec.name, result))


def _head_summary(head: str, result: CVResult) -> str:
    """``resnet18 done: 5 fits, balanced acc. 0.812, ROC AUC 0.871 (fold means)``: a head's stage end."""
    folds = result.fold_results(head)
    numbers = []
    auc, labels = ("roc_auc_macro", mm.LABELS) if result.multiclass else ("roc_auc", fm.LABELS)
    for m in ("balanced_accuracy", auc):
        values = [v for v in (f.metrics.get(m, math.nan) for f in folds) if not math.isnan(v)]
        numbers.append(f"{labels[m]} {sum(values) / len(values):.3f}" if values else f"{labels[m]} n/a")
    return f"{head} done: {len(folds)} fit{'s' if len(folds) != 1 else ''}, {', '.join(numbers)} (fold means)"


def _check_finetuned_features(store: Any, specs: list[HeadSpec], plan: SplitPlan) -> None:
    """Fail before any fit when a fold lacks a backbone or tokens a head needs."""
    for fold in sorted({s.fold for s in plan.splits}):
        for spec in specs:
            try:
                head_blocks(store, spec, fold)
            except StoreError as exc:
                raise StoreError(
                    f"head {spec.name!r} reads {' + '.join(spec.backbones)} {spec.inputs}, which fold {fold} "
                    f"lacks ({exc}): fine-tune those backbones too, or pick a head that reads only what was "
                    "fine-tuned"
                ) from None


def _seed_of(plan: SplitPlan) -> int:
    return int(plan.protocol["seed"])


def _fit_fold(
    est: Any,
    spec: Any,
    X_train: np.ndarray,
    X_test: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    split: Split,
    pos: int,
    n_eval: int,
    result: CVResult,
) -> FoldResult:
    t0 = time.perf_counter()
    fit_estimator(est, X_train, y[split.train], groups[split.train])
    fit_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba = np.asarray(est.predict_proba(X_test))
    predict_time = time.perf_counter() - t0
    est_classes = list(np.asarray(est.classes_).tolist())
    if result.multiclass:
        return _multiclass_fold(est, spec, X_test, proba, est_classes, y, split, n_eval, result, fit_time,
                                predict_time)
    if pos not in est_classes:
        raise FusionfeatError(f"head {spec.name!r}: fold {split.fold} trained without the positive class")
    p = proba[:, est_classes.index(pos)].astype(float)
    predict = getattr(est, "predict", None)  # an operating point's threshold lives in predict
    y_pred = np.asarray(predict(X_test) if predict else np.asarray(est_classes)[proba.argmax(axis=1)])
    y_test = y[split.test]
    result.oof[spec.name][split.repeat, split.test] = p
    result.oof_proba[spec.name][split.repeat, split.test, pos] = p
    result.oof_proba[spec.name][split.repeat, split.test, 1 - pos] = 1.0 - p
    _attention_maps(est, spec, X_test, split, result)
    result.oof_pred[spec.name][split.repeat, split.test] = (y_pred == pos).astype(float)
    threshold = getattr(est, "threshold_", None)
    scores = fm.binary_metrics(y_test, y_pred, p, positive=pos)
    scores.update(fit_time=fit_time, predict_time=predict_time)
    return FoldResult(
        head=spec.name,
        repeat=split.repeat,
        fold=split.fold,
        metrics=scores,
        confusion=fm.confusion(y_test, y_pred, positive=pos).tolist(),
        roc=fm.roc_points(y_test, p, positive=pos),
        n_train=len(split.train),
        n_test=len(split.test),
        history=_history(est),
        fusion_weights=_fusion_weights(est, spec, X_test, y_test, split, result),
        n_train_images=int(np.sum(split.train < n_eval)),
        threshold=None if threshold is None else float(threshold),
        inner_rates=getattr(est, "inner_rates_", None),
        kernel=fitted_kernel(est),
    )


def _multiclass_fold(
    est: Any,
    spec: Any,
    X_test: np.ndarray,
    proba: np.ndarray,
    est_classes: list[int],
    y: np.ndarray,
    split: Split,
    n_eval: int,
    result: CVResult,
    fit_time: float,
    predict_time: float,
) -> FoldResult:
    """One K-class fold: the head's columns placed on all K classes (a class the training fold lacked gets
    probability 0), rows renormalised to sum to 1, the predicted class = the most probable one."""
    k = len(result.classes)
    P = np.zeros((len(proba), k))
    P[:, est_classes] = proba.astype(float)
    P /= P.sum(axis=1, keepdims=True)
    y_pred = P.argmax(axis=1)
    y_test = y[split.test]
    result.oof_proba[spec.name][split.repeat, split.test] = P
    result.oof_pred[spec.name][split.repeat, split.test] = y_pred.astype(float)
    _attention_maps(est, spec, X_test, split, result)
    scores = mm.fold_metrics(y_test, y_pred, P)
    scores.update(fit_time=fit_time, predict_time=predict_time)
    return FoldResult(
        head=spec.name,
        repeat=split.repeat,
        fold=split.fold,
        metrics=scores,
        confusion=mm.confusion_matrix(y_test, y_pred, k).tolist(),
        roc={"fpr": [], "tpr": []},  # K > 2: the one-vs-rest curves are drawn from the pooled rows
        n_train=len(split.train),
        n_test=len(split.test),
        history=_history(est),
        fusion_weights=_fusion_weights(est, spec, X_test, y_test, split, result),
        n_train_images=int(np.sum(split.train < n_eval)),
        kernel=fitted_kernel(est),
        per_class=mm.per_class(y_test, y_pred, P),
    )


def fitted_kernel(est: Any) -> str | None:
    """The ``kernel_`` of a fitted head (through pipelines and calibration/operating-point wrappers); None without."""
    while est is not None:
        if hasattr(est, "kernel_"):
            return str(est.kernel_)
        est = est.steps[-1][1] if hasattr(est, "steps") else getattr(est, "estimator_", None)
    return None


def _history(est: Any) -> list[dict[str, float]] | None:
    history = getattr(est, "history_", None)
    if not history:
        return None
    return [{k: _num(v) for k, v in epoch.items()} for epoch in history]


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _fusion_weights(
    est: Any, spec: Any, X_test: np.ndarray, y_test: np.ndarray, split: Split, result: CVResult
) -> dict[str, dict[str, float]] | None:
    weigh: Callable[[np.ndarray], np.ndarray] | None = getattr(est, "fusion_weights", None)
    if weigh is None:
        return None
    w = np.asarray(weigh(X_test), dtype=float).reshape(len(X_test), -1)
    names = list(spec.backbones) if w.shape[1] == len(spec.backbones) else [f"w{i}" for i in range(w.shape[1])]
    if spec.name not in result.oof_weights:
        result.oof_weights[spec.name] = np.full(result.test_fold.shape + (w.shape[1],), np.nan)
        result.weight_names[spec.name] = names
    result.oof_weights[spec.name][split.repeat, split.test] = w
    return {
        result.classes[c]: dict(zip(names, w[y_test == c].mean(axis=0).tolist(), strict=True))
        for c in np.unique(y_test).tolist()
    }


def _attention_maps(est: Any, spec: Any, X_test: np.ndarray, split: Split, result: CVResult) -> None:
    """Keep the out-of-fold attention maps of heads that have them (``attention-spatial``)."""
    look: Callable[[np.ndarray], list[np.ndarray]] | None = getattr(est, "attention_maps", None)
    if look is None:
        return
    maps = look(X_test)
    if spec.name not in result.oof_attention:
        result.oof_attention[spec.name] = [np.full(result.test_fold.shape + (m.shape[1],), np.nan) for m in maps]
    for store, m in zip(result.oof_attention[spec.name], maps, strict=True):
        store[split.repeat, split.test] = m


def _wrap(est: Any, options: dict[str, Any], pos: int, seed: int) -> Any:
    """The head wrapped in post-hoc calibration and/or an operating point, per the run's options."""
    if options.get("calibrate"):
        est = CalibratedHead(est, method=options["calibrate"], random_state=seed)
    target = options.get("operating_target")
    if target:
        est = InnerOperatingPoint(est, positive=pos, random_state=seed, **target)
    return est
