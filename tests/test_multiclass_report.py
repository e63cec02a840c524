"""K-class runs end to end on small stores written with the store writer: cross-validation, metrics.json,
predictions.csv, report.md, tables and figures, each number recomputed independently from the written files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from sklearn import metrics as skm

from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.report import compare_runs, load_run, write_run
from fusionfeat.report.context import class_selection_line, skipped_at_extraction
from fusionfeat.store import FeatureStore, create_feature_datasets, create_store_file, finish_store

N_BOOT = 200


def write_k_store(path: Path, k: int, n_subjects: int = 15, cells: int = 4, seed: int = 0,
                  subjects: bool = True, separation: float = 0.9) -> Path:
    """A finished store of ``k`` classes (subject s has class s % k) with two backbones of class-dependent
    pooled features (class centres scaled by ``separation``), written through the same writer ``fusionfeat
    extract`` uses."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), cells)
    labels = (subject % k).astype(np.int64)
    n = len(labels)
    classes = [f"type{chr(65 + i)}" for i in range(k)]
    samples = {
        "path": np.array([f"{classes[y]}/cell_{i:03d}.png" for i, y in enumerate(labels)]),
        "label": labels,
        "group": np.array([f"S{s}" if subjects else "" for s in subject]),
        "fold": np.full(n, -1, dtype=np.int64),
        "sha256": np.array([f"{i:064x}" for i in range(n)]),
        "ok": np.ones(n, dtype=bool),
        "error": np.array([""] * n),
    }
    tmp = path.with_name(path.name + ".tmp")
    h5 = create_store_file(tmp, samples, classes, {"created": "2024-01-01T00:00:00+00:00"})
    features = h5.create_group("features")
    for name, dim in (("alpha", 6), ("beta", 5)):
        centers = rng.normal(size=(k, dim))
        x = rng.normal(size=(n, 1, dim)) + separation * centers[labels][:, None, :]
        attrs = {"backbone": name, "weights": "random", "weights_kind": "random", "weights_sha256": "", "seed": 0,
                 "input_size": 32, "normalization": "imagenet", "views": "1", "precision": "fp32", "device": "cpu"}
        group = create_feature_datasets(features, name, n, 1, dim, None, attrs)
        group["pooled"][:] = x.astype(np.float32)
    finish_store(h5, tmp, path)
    return path


@pytest.fixture(scope="module", params=[3, 4, 5])
def k_run(request, tmp_path_factory):
    k = request.param
    root = tmp_path_factory.mktemp(f"k{k}")
    store = write_k_store(root / "store.h5", k, n_subjects=3 * k)
    repeats = 2 if k == 4 else 1
    result = cross_validate(store, ["logreg", "xgboost"], folds=3, repeats=repeats, progress=False)
    out = write_run(result, root / "run", n_boot=N_BOOT)
    return k, result, out


def _predictions(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", keep_default_na=False, dtype={"group": str})


def test_the_store_records_k_classes_and_no_positive_class(tmp_path):
    path = write_k_store(tmp_path / "s.h5", 4)
    with FeatureStore.open(path) as fs:
        assert fs.classes == ["typeA", "typeB", "typeC", "typeD"]
        assert fs.positive_class is None
        assert fs.provenance()["positive_class"] is None
    two = write_k_store(tmp_path / "two.h5", 2)
    with FeatureStore.open(two) as fs:  # binary unchanged: [negative, positive]
        assert fs.classes == ["typeA", "typeB"] and fs.positive_class == "typeB"


def test_a_k_class_store_with_a_positive_class_is_refused_as_damaged(tmp_path):
    import h5py

    path = write_k_store(tmp_path / "s.h5", 3)
    with h5py.File(path, "r+") as h5:
        h5["samples"].attrs["positive"] = "typeB"
    with pytest.raises(StoreError, match="damaged"):
        FeatureStore.open(path)


def test_every_row_of_predictions_csv_sums_to_one_per_head(k_run):
    k, result, out = k_run
    frame = _predictions(out)
    classes = result.classes
    for head in result.heads:
        cols = [f"p_{c}_{head}" for c in classes]
        assert all(c in frame.columns for c in cols)
        np.testing.assert_allclose(frame[cols].to_numpy(float).sum(axis=1), 1.0, atol=1e-12)
        predicted = np.asarray(classes)[frame[cols].to_numpy(float).argmax(axis=1)]
        assert (frame[f"pred_{head}"] == predicted).all()
    assert len(frame) == result.test_fold.size


def test_macro_auc_recomputed_from_predictions_csv_equals_the_report(k_run):
    k, result, out = k_run
    data = json.loads((out / "metrics.json").read_text())
    frame = _predictions(out)
    classes = data["classes"]
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    for head in data["heads"]:
        cols = [f"p_{c}_{head}" for c in classes]
        u = data["heads"][head]["uncertainty"]
        for r, part in frame.groupby("repeat"):
            P = part[cols].to_numpy(float)
            yr = y[part.index]
            want = skm.roc_auc_score(yr, P, multi_class="ovr", average="macro")
            assert u["roc_auc_macro"]["pooled"]["per_repeat"][r] == pytest.approx(want, abs=1e-12)
            bacc = skm.balanced_accuracy_score(yr, P.argmax(axis=1))
            assert u["balanced_accuracy"]["pooled"]["per_repeat"][r] == pytest.approx(bacc, abs=1e-12)
            # per fold: the fold's metrics in metrics.json are scikit-learn's on that fold's rows
            for f in (f for f in data["heads"][head]["folds"] if f["repeat"] == r):
                rows = part["fold"].to_numpy() == f["fold"]
                yf, Pf = yr[rows], P[rows]
                if len(np.unique(yf)) == k:
                    auc = skm.roc_auc_score(yf, Pf, multi_class="ovr", labels=np.arange(k))
                    assert f["metrics"]["roc_auc_macro"] == pytest.approx(auc, abs=1e-12)
                assert f["metrics"]["kappa"] == pytest.approx(skm.cohen_kappa_score(yf, Pf.argmax(1)), abs=1e-12)
                assert f["metrics"]["log_loss"] == pytest.approx(skm.log_loss(yf, Pf, labels=np.arange(k)),
                                                                 abs=1e-9)
        macro = u["roc_auc_macro"]["pooled"]
        assert macro["mean"] == pytest.approx(np.mean(macro["per_repeat"]))
        assert macro["bootstrap"]["lo"] <= macro["mean"] + 1e-12 <= macro["bootstrap"]["hi"] + 2e-12


def test_corrected_t_interval_by_the_nadeau_bengio_formula(k_run):
    k, result, out = k_run
    data = load_run(out)
    n_eval = len(result.rows["sample"])
    for info in data["heads"].values():
        values = np.array([f["metrics"]["balanced_accuracy"] for f in info["folds"]])
        n_test = np.array([f["n_test"] for f in info["folds"]], dtype=float)
        n_train = n_eval - n_test
        J = len(values)
        se = math.sqrt((1 / J + np.mean(n_test / n_train)) * values.var(ddof=1))
        half = st.t.ppf(0.975, J - 1) * se
        ci = info["uncertainty"]["balanced_accuracy"]["corrected_t"]
        assert (ci["lo"], ci["hi"]) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)


def test_confusion_matrix_and_per_class_table_match_the_predictions(k_run):
    k, result, out = k_run
    data = load_run(out)
    frame = _predictions(out)
    classes = data["classes"]
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    table = pd.read_csv(out / "table_confusion.csv")
    for head, info in data["heads"].items():
        pred = frame[f"pred_{head}"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        cm = skm.confusion_matrix(y, pred, labels=np.arange(k))
        assert info["pooled"]["confusion"] == cm.tolist() == info["confusion_total"]
        rows = table[table["head"] == head][[f"pred_{c}" for c in classes]].to_numpy()
        assert rows.tolist() == cm.tolist()
        first = frame["repeat"].to_numpy() == 0
        p, r, f1, s = skm.precision_recall_fscore_support(y[first], pred[first], labels=np.arange(k), zero_division=0)
        pc = info["pooled"]["per_class"]
        if data["protocol"]["repeats"] == 1:
            assert pc["precision"] == pytest.approx(p.tolist()) and pc["recall"] == pytest.approx(r.tolist())
            assert pc["f1"] == pytest.approx(f1.tolist())
        assert pc["support"] == s.tolist()


def test_report_has_per_class_table_confusion_pairs_and_the_delong_note(k_run):
    k, result, out = k_run
    text = (out / "report.md").read_text()
    assert "multi-class" in text and f"**{k} classes**" in text
    assert "## Per class" in text and f"## Confusion matrices ({k}×{k}" in text
    assert "## Paired head comparisons" in text and "does not apply to a macro average" in text
    assert "macro OvR AUC" in text and "## Subject level" in text
    for c in result.classes:
        assert f"| {c} |" in text
    for name in ("confusion", "roc", "reliability"):
        for head in result.heads:
            assert (out / "figures" / f"{name}_{head}.png").stat().st_size > 1000
    assert (out / "report.tex").read_text().count(r"\begin{table}") == 2
    assert (out / "subjects.csv").exists()


def test_subject_level_class_is_the_argmax_of_mean_probabilities(k_run):
    k, result, out = k_run
    data = load_run(out)
    frame = _predictions(out)
    classes = data["classes"]
    sub = data["subjects"]
    head = "logreg"
    cols = [f"p_{c}_{head}" for c in classes]
    first = frame[frame["repeat"] == 0]
    means = first.groupby("group")[cols].mean()
    truth = first.groupby("group")["label"].first()
    pred = means.to_numpy().argmax(axis=1)
    y = truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
    acc = float(np.mean(pred == y))
    assert sub["heads"][head]["metrics"]["accuracy"]["per_repeat"][0] == pytest.approx(acc)
    bacc = skm.balanced_accuracy_score(y, pred)
    assert sub["heads"][head]["metrics"]["balanced_accuracy"]["per_repeat"][0] == pytest.approx(bacc)


def test_paired_comparison_per_fold_differences(k_run):
    k, result, out = k_run
    data = load_run(out)
    pair = data["comparisons"]["pairs"][0]
    a, b = data["heads"][pair["a"]], data["heads"][pair["b"]]
    diffs = [fa["metrics"]["roc_auc_macro"] - fb["metrics"]["roc_auc_macro"] for fa, fb in zip(a["folds"], b["folds"],
                                                                                                  strict=True)]
    assert pair["metrics"]["roc_auc_macro"]["per_fold"]["diff"] == pytest.approx(np.nanmean(diffs))
    pooled = pair["metrics"]["roc_auc_macro"]["pooled"]
    want = a["uncertainty"]["roc_auc_macro"]["pooled"]["mean"] - b["uncertainty"]["roc_auc_macro"]["pooled"]["mean"]
    assert pooled["diff"] == pytest.approx(want, abs=1e-12)
    assert "paired bootstrap" in pooled["method"]


def test_load_run_and_compare_runs_read_k_class_runs(k_run):
    k, result, out = k_run
    data = load_run(out)
    assert data["positive"] is None and len(data["classes"]) == k
    table = compare_runs([out, out])
    assert "macro OvR AUC" in table and "argmax (the most probable class)" in table


def test_predictions_frame_has_one_probability_column_per_class(k_run):
    k, result, out = k_run
    frame = result.predictions_frame()
    cols = [f"p_{c}" for c in result.classes]
    np.testing.assert_allclose(frame[cols].to_numpy(float).sum(axis=1), 1.0, atol=1e-12)
    assert result.oof == {}  # no P(positive) with more than two classes
    folds = result.to_frame()
    assert {"roc_auc_macro", "kappa", "log_loss"} <= set(folds.columns) and "specificity" not in folds.columns
    table = result.metrics_table()
    means = folds.groupby("head")["balanced_accuracy"].mean()
    for head in result.heads:
        assert table.loc[head, "balanced_accuracy_mean"] == pytest.approx(means[head])
    assert result.protocol["positive"] is None and result.positive is None


def test_operating_point_positive_and_subject_aggregate_are_binary_only(tmp_path):
    store = write_k_store(tmp_path / "s.h5", 3)
    with pytest.raises(FusionfeatError, match="--operating-point is binary only; this store has 3 classes"):
        cross_validate(store, "logreg", operating_point="sens=0.9", progress=False)
    with pytest.raises(FusionfeatError, match="--positive is binary only"):
        cross_validate(store, "logreg", positive="typeA", progress=False)
    with pytest.raises(FusionfeatError, match="--subject-aggregate fraction is binary only"):
        cross_validate(store, "logreg", subject_aggregate="fraction", progress=False)


def test_binary_oof_proba_is_one_minus_p_and_p_in_class_order(tmp_path):
    store = write_k_store(tmp_path / "two.h5", 2, n_subjects=12)
    result = cross_validate(store, "logreg", folds=3, progress=False)
    P = result.oof_proba["logreg"]
    p = result.oof["logreg"]
    assert result.positive == "typeB"
    np.testing.assert_array_equal(P[..., 1], p)
    np.testing.assert_array_equal(P[..., 0], 1.0 - p)
    out = write_run(result, tmp_path / "run", n_boot=20)
    with open(out / "predictions.csv") as fh:  # the binary layout: one P(positive) column per head
        assert next(csv.reader(fh))[:8] == ["repeat", "fold", "path", "view", "label", "group", "p_typeB_logreg",
                                            "pred_logreg"]


def test_the_class_selection_is_said_in_the_report():
    data = {"provenance": {"class_selection": {
        "spec": "granulocyte=Neutrophil+Eosinophil,Lymphocyte,Monocyte",
        "classes": ["granulocyte", "Lymphocyte", "Monocyte"],
        "mapping": {"Neutrophil": "granulocyte", "Eosinophil": "granulocyte", "Lymphocyte": "Lymphocyte",
                    "Monocyte": "Monocyte", "Basophil": None},
        "left_out": 3}}}
    line = class_selection_line(data)
    assert "granulocyte = Neutrophil + Eosinophil" in line and "Lymphocyte, Monocyte" in line
    assert line.endswith("3 images of other classes left out")
    assert class_selection_line({"provenance": {}}) is None


def test_images_a_class_selection_left_out_are_not_counted_as_skipped_at_extraction():
    # 2 unreadable at extraction + 3 usable Basophil crops left out by --classes: the plan's unusable rows are 5
    data = {"protocol": {"n_skipped": 5}, "provenance": {"class_selection": {"left_out": 3}}}
    assert skipped_at_extraction(data) == 2
    assert skipped_at_extraction({"protocol": {"n_skipped": 5}, "provenance": {}}) == 5


def test_images_without_subjects_are_resampled_as_images(tmp_path):
    store = write_k_store(tmp_path / "s.h5", 3, subjects=False)
    result = cross_validate(store, ["logreg", "xgboost"], folds=3, progress=False)
    out = write_run(result, tmp_path / "run", n_boot=50)
    data = load_run(out)
    boot = data["heads"]["logreg"]["uncertainty"]["roc_auc_macro"]["pooled"]["bootstrap"]
    assert boot["unit"] == "image" and boot["n_units"] == len(result.rows["sample"])
    assert data["subjects"] is None and not (out / "subjects.csv").exists()
    assert "## Subject level" not in (out / "report.md").read_text()


def test_a_class_missing_from_a_training_fold_gets_probability_zero_there(tmp_path):
    import h5py

    path = write_k_store(tmp_path / "rare.h5", 5, n_subjects=40, cells=2, subjects=False)
    with h5py.File(path, "r+") as h5:
        labels = h5["samples/label"][:]
        rare = np.flatnonzero(labels == 4)
        labels[rare[3:]] = 0  # class 4 keeps 3 images ...
        h5["samples/label"][:] = labels
        fold = np.arange(len(labels)) % 3
        fold[rare[:3]] = 0  # ... all in predefined fold 0, so fold 0's training rows lack it
        h5["samples/fold"][:] = fold
    result = cross_validate(path, "logreg", protocol="predefined", progress=False)
    P = result.oof_proba["logreg"][0]
    in_fold0 = result.test_fold[0] == 0
    assert np.all(P[in_fold0, 4] == 0.0) and np.all(P[~in_fold0, 4] > 0.0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    by_fold = {f.fold: f.metrics for f in result.folds}
    assert by_fold[0]["n_auc_classes"] == 5 and by_fold[1]["n_auc_classes"] == 4  # class 4 absent from fold 1's test
    rows = result.test_fold[0] == 1
    y = result.rows["label"][rows]
    aucs = [skm.roc_auc_score(y == c, P[rows, c]) for c in range(4)]
    assert by_fold[1]["roc_auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-12)
    out = write_run(result, tmp_path / "run", n_boot=50)
    frame = _predictions(out)
    cols = [f"p_{c}_logreg" for c in result.classes]
    np.testing.assert_allclose(frame[cols].to_numpy(float).sum(axis=1), 1.0, atol=1e-12)


def test_a_torch_head_on_three_classes_writes_its_training_curves(tmp_path):
    store = write_k_store(tmp_path / "s.h5", 3, n_subjects=9)
    result = cross_validate(store, ["alpha", "logreg"], folds=3, progress=False, device="cpu",
                            head_params={"alpha": {"max_epochs": 3}})
    np.testing.assert_allclose(result.oof_proba["alpha"].sum(axis=2), 1.0, atol=1e-12)
    out = write_run(result, tmp_path / "run", n_boot=20)
    assert (out / "training.png").stat().st_size > 1000
    assert "![training curves](training.png)" in (out / "report.md").read_text()


def test_study_and_info_on_a_k_class_store(tmp_path):
    from fusionfeat.info import describe_store
    from fusionfeat.study import run_study

    store = write_k_store(tmp_path / "s.h5", 4, n_subjects=16)
    with pytest.raises(FusionfeatError, match="needs a store with dihedral views"):  # K classes are studied now
        run_study(store, progress=False)
    text = describe_store(store)
    assert "(typeA 16, typeB 16, typeC 16, typeD 16; 4 classes, no positive class)" in text


def test_three_heads_give_three_pairs_with_holm_adjusted_p(tmp_path):
    from fusionfeat.evaluation.multiclass_evidence import comparisons

    store = write_k_store(tmp_path / "s.h5", 3, n_subjects=12)
    result = cross_validate(store, ["logreg", "xgboost", "alpha"], folds=3, progress=False, device="cpu",
                            head_params={"alpha": {"max_epochs": 3}})
    comp = comparisons(result, n_boot=100)
    assert [(p["a"], p["b"]) for p in comp["pairs"]] == [("logreg", "xgboost"), ("logreg", "alpha"),
                                                         ("xgboost", "alpha")]
    # the family is the whole table a reader scans: every pair, both metrics, both tests (12 p-values here)
    tests = [pair["metrics"][metric][test] for pair in comp["pairs"] for metric in ("roc_auc_macro",
             "balanced_accuracy") for test in ("per_fold", "pooled")]
    tests = [t for t in tests if not t.get("edge")]
    p = np.array([t["p"] for t in tests])
    order = np.argsort(p)
    # Holm (1979) by hand: the i-th smallest p times (m - i), made monotone, capped at 1
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    want = np.empty_like(p)
    want[order] = stepped
    assert [t["p_holm"] for t in tests] == pytest.approx(want.tolist())


def test_a_binary_run_made_by_merging_classes_says_so_in_its_report(tmp_path):
    store = write_k_store(tmp_path / "two.h5", 2, n_subjects=12)
    result = cross_validate(store, "logreg", folds=3, progress=False)
    result.provenance["class_selection"] = {  # as part of a --classes store view records it
        "spec": "typeB=Blast+Myeloblast,typeA", "classes": ["typeA", "typeB"],
        "mapping": {"Blast": "typeB", "Myeloblast": "typeB", "typeA": "typeA", "Other": None}, "left_out": 1}
    out = write_run(result, tmp_path / "run", n_boot=20)
    text = (out / "report.md").read_text()
    assert ("- class selection `--classes typeB=Blast+Myeloblast,typeA`: typeA, typeB = Blast + Myeloblast; "
            "1 image of other classes left out") in text


def test_subject_level_is_left_out_under_image_level_folds(tmp_path):
    """Under stratified (image-level) folds a subject's other cells sit in training: no subject-level result,
    one line saying why (issue 20), as for two classes."""
    store = write_k_store(tmp_path / "s.h5", 3, n_subjects=9)
    result = cross_validate(store, "logreg", protocol="stratified", folds=3, progress=False)
    out = write_run(result, tmp_path / "run", n_boot=50)
    data = json.loads((out / "metrics.json").read_text())
    assert "heads" not in data["subjects"] and "not subject-disjoint" in data["subjects"]["left_out"]
    assert not (out / "subjects.csv").exists()
    assert "Left out: the folds are not subject-disjoint" in (out / "report.md").read_text()
