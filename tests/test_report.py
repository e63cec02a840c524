"""The run folder: files, the paper's numbers beside ours, and the warnings a reader must not miss."""

from __future__ import annotations

import csv
import json
import math
from functools import partial

import numpy as np
import pytest
from scipy import stats as st
from sklearn import metrics as skm

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.evaluation.metrics import LABELS
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.report import compare_runs, describe_weights, write_run
from tests.conftest import one_torch_thread
from tests.test_evaluate import PAIR, RECORDER, fake_store

TINY_ATTENTION = HeadSpec(
    "attention-pooled",
    ("resnet18", "vgg16"),
    "pooled",
    True,
    partial(TorchHeadClassifier, architecture="attention-pooled", max_epochs=2, hidden=16, attn_dim=8),
)


TINY_MLP = partial(TorchHeadClassifier, architecture="mlp", max_epochs=2, hidden=16)
TINY_RESNET = HeadSpec("resnet18", ("resnet18",), "pooled", True, TINY_MLP)
TINY_CONCAT = HeadSpec("concat", ("resnet18", "vgg16"), "pooled", True, TINY_MLP)
N_BOOT = 300


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    store = fake_store()
    with one_torch_thread():
        result = cross_validate(
            store, ["logreg", TINY_ATTENTION, TINY_RESNET, TINY_CONCAT], folds=3, repeats=2, progress=False,
            backbones=PAIR,
        )
    return result, write_run(result, tmp_path_factory.mktemp("run") / "grouped", n_boot=N_BOOT)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_run_writes_every_file(grouped_run):
    result, out = grouped_run
    for name in ("metrics.json", "predictions.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in out.glob("*.png")) == ["summary.png", "training.png"]  # the paper's figures
    heads = ["attention-pooled", "concat", "logreg", "resnet18"]
    expected = [f"{kind}_{h}.png" for kind in ("confusion", "reliability", "roc", "subject_confusion", "subject_roc")
                for h in heads]
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(expected)  # per-head details
    assert (out / "subjects.csv").stat().st_size > 0
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_metrics_json_holds_everything_as_strict_json(grouped_run):
    result, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())  # strict: NaN would have been written as null
    assert data["protocol"]["name"] == "grouped" and data["protocol"]["repeats"] == 2
    assert data["provenance"]["backbones"]["resnet18"]["weights_kind"] == "imagenet"
    logreg = data["heads"]["logreg"]
    assert len(logreg["folds"]) == 6
    assert set(logreg["summary"]) >= {"accuracy", "specificity", "mcc", "roc_auc", "fit_time", "predict_time"}
    ci = logreg["uncertainty"]["accuracy"]["corrected_t"]
    assert ci["method"] == "corrected resampled t" and ci["lo"] <= ci["mean"] <= ci["hi"]
    attention = data["heads"]["attention-pooled"]
    assert attention["folds"][0]["history"][0]["epoch"] == 1
    assert set(attention["fusion_weights_by_class"]) == {"hem", "all"}
    assert data["paper"]["table1"]["attention"]["accuracy"] == 0.9216


def test_predictions_csv_has_oof_probabilities_per_repeat(grouped_run):
    result, out = grouped_run
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(result.rows["sample"])
    assert {"repeat", "fold", "path", "view", "label", "group", "p_all_logreg", "p_all_attention-pooled"} <= set(
        rows[0]
    )
    assert {"w_attention-pooled_resnet18", "w_attention-pooled_vgg16"} <= set(rows[0])
    first = [r for r in rows if r["repeat"] == "1"]
    assert [float(r["p_all_logreg"]) for r in first] == result.oof["logreg"][1].tolist()  # full precision
    assert {r["label"] for r in rows} == {"hem", "all"}


def test_report_is_table1_with_the_papers_numbers(grouped_run):
    _, out = grouped_run
    text = (out / "report.md").read_text()
    assert "paper, Table 1" in text
    for number in ("0.8902", "0.9548", "0.9053", "0.9582", "0.9216", "0.9697", "0.9459", "0.8944", "0.9194"):
        assert number in text
    assert "Khongsep" in text
    for column in ("accuracy", "precision", "recall", "specificity", "F1", "balanced acc.", "MCC", "ROC AUC"):
        assert column in text
    assert "Uncertainty: per-fold and pooled out-of-fold values" in text
    assert "Nadeau–Bengio corrected resampled t" in text and "pooled OOF" in text and "per-fold mean ± sd" in text
    assert "Note on the paper's F1" in text and "2PR/(P+R)" in text
    assert "Does fusion help?" in text and "SUBJECT-LEVEL" in text and "## Calibration" in text
    assert "Hard predictions are the argmax" in text
    assert "| `logreg` | ours | resnet18 IMAGENET, vgg16 IMAGENET |" in text
    assert "RANDOM" not in text and "LEAKY" not in text
    assert "![logreg ROC per fold](figures/roc_logreg.png)" in text and "![ROC of every head](summary.png)" in text
    assert "Fusion weights" in text


def test_random_weights_and_leaky_protocol_are_flagged_at_the_top(tmp_path):
    store = fake_store()
    store.weights_kind = "random"
    result = cross_validate(store, ["logreg"], protocol="paper", progress=False, backbones=PAIR)
    out = write_run(result, tmp_path / "paper")
    text = (out / "report.md").read_text()
    captions = [line for line in (out / "report.tex").read_text().splitlines() if line.startswith("\\caption")]
    assert captions and all("LEAKY PROTOCOL" in c and "RANDOM-WEIGHT FEATURES in logreg" in c for c in captions)
    assert "logreg [RANDOM]" in (out / "report.tex").read_text()
    assert "under `paper` n counts the scored rows" in text and "not augmentation copies" not in text
    head = text[: text.index("## Results")]
    assert "**WARNING: RANDOM-WEIGHT FEATURES** in head(s) `logreg`" in head and "NOT comparable" in head
    assert "**WARNING: LEAKY PROTOCOL (`paper`).**" in head and "BEFORE the split" in head
    assert "**RANDOM** (seed 0), not ImageNet" in text


def test_random_warning_only_for_backbones_the_heads_used(tmp_path):
    store = fake_store()
    result = cross_validate(store, [RECORDER], progress=False)
    result.provenance["backbones"]["resnet18"]["weights_kind"] = "random"
    text = (write_run(result, tmp_path / "r") / "report.md").read_text()
    assert "RANDOM-WEIGHT" not in text  # the recorder reads only the `ident` backbone


def test_unknown_subjects_make_an_image_level_note(tmp_path):
    result = cross_validate(fake_store(subjects_known=False), ["logreg"], progress=False, backbones=PAIR)
    text = (write_run(result, tmp_path / "s") / "report.md").read_text()
    assert "image-level folds** (subjects are unknown)" in text
    assert "chosen by default" in text


def test_a_weights_file_is_named_with_its_hash_never_imagenet():
    text = describe_weights({"weights_kind": "file", "weights": "cnmc_vgg16.pt", "weights_sha256": "c0ffee" * 10})
    assert "cnmc_vgg16.pt" in text and "c0ffee" * 10 in text and "imagenet" not in text.lower()
    assert "ImageNet" in describe_weights({"weights_kind": "imagenet", "weights": "imagenet:IMAGENET1K_V1"})


def test_compare_runs_lines_runs_up(grouped_run, tmp_path):
    _, grouped = grouped_run
    store = fake_store()
    store.weights_kind = "random"
    leaky = cross_validate(store, ["logreg"], protocol="paper", progress=False, backbones=PAIR)
    leaky = write_run(leaky, tmp_path / "leaky")
    table = compare_runs([grouped, leaky])
    assert "`grouped`" in table and "`leaky`" in table
    assert "**LEAKY RANDOM**" in table
    assert table.count("`logreg`") == 2 and "`attention-pooled`" in table
    with pytest.raises(FusionfeatError, match="not a fusionfeat run folder"):
        compare_runs([tmp_path])


def test_paper_fusion_row_only_beside_a_fusion_of_its_own_pair():
    from fusionfeat.report.markdown import paper_key

    assert paper_key("attention-spatial", ["vgg16", "resnet18"]) == "attention"
    assert paper_key("attention-pooled") == "attention" and paper_key("vgg16", ["vgg16"]) == "vgg16"
    assert paper_key("attention-spatial", ["resnet18", "vgg16", "densenet121"]) is None
    assert paper_key("concat", ["resnet18", "vgg16"]) is None
# ----------------------------------------------------------------------------------------------- issue 9 numbers


def _truth(rows):
    return np.array([r["label"] == "all" for r in rows], dtype=int)


def _by_repeat(rows):
    return {r: [row for row in rows if row["repeat"] == str(r)] for r in sorted({int(row["repeat"]) for row in rows})}


def test_predictions_csv_reproduces_every_reported_auc_exactly(grouped_run):
    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    rows = read_csv(out / "predictions.csv")
    for head, info in data["heads"].items():
        col = f"p_all_{head}"
        for fold in info["folds"]:
            part = [r for r in rows if r["repeat"] == str(fold["repeat"]) and r["fold"] == str(fold["fold"])]
            auc = skm.roc_auc_score(_truth(part), [float(r[col]) for r in part])
            assert auc == fold["metrics"]["roc_auc"], (head, fold["repeat"], fold["fold"])  # to the last digit
        pooled = info["uncertainty"]["roc_auc"]["pooled"]
        per_repeat = [skm.roc_auc_score(_truth(part), [float(r[col]) for r in part])
                      for part in _by_repeat(rows).values()]
        assert per_repeat == pooled["per_repeat"] and float(np.mean(per_repeat)) == pooled["mean"]


def _sk_metric(name, y, pred):
    if name == "mcc" and (len(set(pred)) < 2 or len(set(y)) < 2):
        return math.nan  # undefined: scikit-learn says 0, the pooled values say NaN (skipped by the bootstrap)
    return {
        "accuracy": lambda: skm.accuracy_score(y, pred),
        "precision": lambda: skm.precision_score(y, pred, zero_division=np.nan),
        "recall": lambda: skm.recall_score(y, pred),
        "specificity": lambda: skm.recall_score(1 - y, 1 - pred),
        "f1": lambda: skm.f1_score(y, pred),
        "balanced_accuracy": lambda: skm.balanced_accuracy_score(y, pred),
        "mcc": lambda: skm.matthews_corrcoef(y, pred),
    }[name]()


def _ratio(a, b):
    return a / b if b else math.nan


def _hand_metric(name, y, s):
    """A pooled metric written out from the counts at s >= 0.5 (NaN for an empty denominator, as the
    bootstrap expects so that it skips the resample); AUC by scikit-learn (NaN with one class)."""
    if name == "roc_auc":
        return skm.roc_auc_score(y, s) if 0 < y.sum() < len(y) else math.nan
    pred, pos = s >= 0.5, y == 1
    tp, tn = int(np.sum(pred & pos)), int(np.sum(~pred & ~pos))
    fp, fn = int(np.sum(pred & ~pos)), int(np.sum(~pred & pos))
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": _ratio(tp, tp + fp),
        "recall": sens,
        "specificity": spec,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "mcc": _ratio(tp * tn - fp * fn, math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
    }[name]


def _hand_subject_bootstrap(groups, statistic, n_boot, seed=0):
    """Subject bootstrap written out, with the same random draws as fusionfeat.stats: subjects in order of first
    appearance, ``np.random.default_rng(seed).integers(0, k, k)`` subject indices per resample, every row of
    each drawn subject kept; resamples whose statistic is NaN are skipped. Returns the valid statistics."""
    subjects = list(dict.fromkeys(groups.tolist()))
    rows_of = [np.flatnonzero(groups == g) for g in subjects]
    rng = np.random.default_rng(seed)
    k = len(subjects)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[c] for c in rng.integers(0, k, k)])
        values.append(statistic(idx))
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _mean_over_repeats(name, y, p):
    """The statistic of one resample: the metric on each repeat's resampled rows, averaged over repeats."""
    return lambda idx: float(np.mean([_hand_metric(name, y[idx], row[idx]) for row in p]))


def test_uncertainty_numbers_match_independent_computations(grouped_run):
    result, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    rows = read_csv(out / "predictions.csv")
    repeats = _by_repeat(rows)
    groups = np.array([r["group"] for r in repeats[0]])
    n_eval = len(result.rows["sample"])
    for head, info in data["heads"].items():
        for name, u in info["uncertainty"].items():
            values = np.array([f["metrics"][name] for f in info["folds"]], dtype=float)
            assert u["per_fold"]["mean"] == pytest.approx(values.mean())
            assert u["per_fold"]["sd"] == pytest.approx(values.std(ddof=1))
            # Nadeau-Bengio by hand: n_train = evaluated images outside the test fold (no copies here)
            n_test = np.array([f["n_test"] for f in info["folds"]], dtype=float)
            assert [f["n_train_images"] for f in info["folds"]] == (n_eval - n_test).tolist()
            j = len(values)
            se = math.sqrt((1 / j + np.mean(n_test / (n_eval - n_test))) * values.var(ddof=1))
            half = st.t.ppf(0.975, j - 1) * se
            ci = u["corrected_t"]
            assert (ci["lo"], ci["hi"], ci["df"]) == pytest.approx((values.mean() - half, values.mean() + half, j - 1))
            # pooled out-of-fold values from the CSV, with scikit-learn
            if name != "roc_auc":
                per_repeat = [
                    _sk_metric(name, _truth(part), np.array([r[f"pred_{head}"] == "all" for r in part], dtype=int))
                    for part in repeats.values()
                ]
                got = [math.nan if v is None else v for v in u["pooled"]["per_repeat"]]  # JSON writes NaN as null
                assert got == pytest.approx(per_repeat, abs=1e-12, nan_ok=True), (head, name)
            # the bootstrap interval: subjects resampled, recomputed by hand from the CSV's columns
            boot = u["pooled"]["bootstrap"]
            assert boot["unit"] == "subject" and boot["n_units"] == 12 and boot["resampled"] == "subjects"
            col = f"p_all_{head}" if name == "roc_auc" else f"pred_{head}"
            p = np.array([[float(r[col]) if name == "roc_auc" else float(r[col] == "all") for r in part]
                          for part in repeats.values()])
            ok = _hand_subject_bootstrap(groups, _mean_over_repeats(name, _truth(repeats[0]), p), N_BOOT)
            assert boot["n_skipped"] == N_BOOT - len(ok)
            if boot["lo"] is not None:
                assert (boot["lo"], boot["hi"]) == pytest.approx(tuple(np.quantile(ok, [0.025, 0.975])))
                assert boot["lo"] <= boot["estimate"] <= boot["hi"] or u["pooled"]["mean"] is None


def test_calibration_numbers_match_sklearn(grouped_run):
    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    repeats = _by_repeat(read_csv(out / "predictions.csv"))
    for head, info in data["heads"].items():
        cal = info["calibration"]
        briers, eces = [], []
        for part in repeats.values():
            y, p = _truth(part), np.array([float(r[f"p_all_{head}"]) for r in part])
            briers.append(skm.brier_score_loss(y, p))
            edges = np.linspace(0, 1, 11)
            ids = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, 9)  # (edge_i, edge_i+1], 0 in bin 0
            eces.append(sum(abs(y[ids == b].mean() - p[ids == b].mean()) * np.sum(ids == b) / len(p)
                            for b in range(10) if np.any(ids == b)))
        assert cal["brier"] == pytest.approx(np.mean(briers)) and cal["ece"] == pytest.approx(np.mean(eces))
        assert cal["n_bins"] == 10 and sum(cal["reliability"]["count"]) == sum(len(p) for p in repeats.values())


def test_does_fusion_help_table_matches_paired_tests_and_holm(grouped_run):
    result, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    comp = data["comparisons"]
    pooled_auc = {h: i["uncertainty"]["roc_auc"]["pooled"]["mean"] for h, i in data["heads"].items()}
    assert comp["best_single"] == "resnet18"  # the only single-backbone head
    rows = comp["fusion_table"]
    assert [(r["head"], r["against"]) for r in rows] == [
        ("logreg", "concat"), ("logreg", "resnet18"), ("attention-pooled", "concat"),
        ("attention-pooled", "resnet18"), ("concat", "resnet18"),
    ]
    repeats = _by_repeat(read_csv(out / "predictions.csv"))
    groups = np.array([r["group"] for r in repeats[0]])
    y = _truth(repeats[0])
    for r in rows:
        a, b = r["head"], r["against"]
        fa = {(f["repeat"], f["fold"]): f for f in data["heads"][a]["folds"]}
        fb = {(f["repeat"], f["fold"]): f for f in data["heads"][b]["folds"]}
        d = np.array([fa[k]["metrics"]["roc_auc"] - fb[k]["metrics"]["roc_auc"] for k in sorted(fa)])
        n_test = np.array([fa[k]["n_test"] for k in sorted(fa)], dtype=float)
        se = math.sqrt((1 / len(d) + np.mean(n_test / (len(y) - n_test))) * d.var(ddof=1))
        t = d.mean() / se
        assert r["per_fold"]["diff"] == pytest.approx(d.mean())
        assert r["per_fold"]["p"] == pytest.approx(2 * st.t.sf(abs(t), len(d) - 1))
        assert r["pooled"]["diff"] == pytest.approx(pooled_auc[a] - pooled_auc[b])
        assert r["pooled"]["method"] == "paired bootstrap over subjects"
        pa = np.array([[float(x[f"p_all_{a}"]) for x in part] for part in repeats.values()])
        pb = np.array([[float(x[f"p_all_{b}"]) for x in part] for part in repeats.values()])
        auc_a, auc_b = _mean_over_repeats("roc_auc", y, pa), _mean_over_repeats("roc_auc", y, pb)
        d = _hand_subject_bootstrap(groups, lambda idx, fa=auc_a, fb=auc_b: fa(idx) - fb(idx), N_BOOT)  # same draws
        lo, hi = np.quantile(d, [0.025, 0.975])
        p_boot = min(1.0, 2 * min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1) / (len(d) + 1))
        assert (r["pooled"]["lo"], r["pooled"]["hi"], r["pooled"]["p"]) == pytest.approx((lo, hi, p_boot))
    for key in ("per_fold", "pooled"):  # Holm by hand: sorted p times (m - rank), running max, capped at 1
        p = np.array([r[key]["p"] for r in rows])
        order = np.argsort(p, kind="stable")
        expected = np.empty(len(p))
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (len(p) - rank) * p[i]))
            expected[i] = running
        assert [r[key]["p_holm"] for r in rows] == pytest.approx(expected.tolist())


def test_subject_level_csv_and_metrics(grouped_run):
    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    subjects = read_csv(out / "subjects.csv")
    repeats = _by_repeat(read_csv(out / "predictions.csv"))
    assert len(subjects) == 2 * 12 and set(subjects[0]) >= {"repeat", "subject", "label", "n_cells", "score_logreg"}
    for row in subjects:
        cells = [r for r in repeats[int(row["repeat"])] if r["group"] == row["subject"]]
        assert int(row["n_cells"]) == len(cells) and {c["label"] for c in cells} == {row["label"]}
        for head in data["heads"]:
            assert float(row[f"score_{head}"]) == pytest.approx(np.mean([float(c[f"p_all_{head}"]) for c in cells]))
    sub = data["subjects"]
    assert sub["aggregate"] == "mean"
    for head in data["heads"]:
        aucs = []
        for r in (0, 1):
            part = [s for s in subjects if s["repeat"] == str(r)]
            y = [s["label"] == "all" for s in part]
            aucs.append(skm.roc_auc_score(y, [float(s[f"score_{head}"]) for s in part]))
        assert sub["heads"][head]["metrics"]["roc_auc"]["per_repeat"] == pytest.approx(aucs)
    text = (out / "report.md").read_text()
    assert "## SUBJECT-LEVEL diagnosis" in text and "subjects.csv" in text


def test_no_subject_section_without_subjects(tmp_path):
    result = cross_validate(fake_store(subjects_known=False), ["logreg"], progress=False, backbones=PAIR)
    out = write_run(result, tmp_path / "s", n_boot=50)
    data = json.loads((out / "metrics.json").read_text())
    assert data["subjects"] is None and not (out / "subjects.csv").exists()
    assert data["heads"]["logreg"]["uncertainty"]["roc_auc"]["pooled"]["bootstrap"]["unit"] == "image"
    assert "SUBJECT-LEVEL" not in (out / "report.md").read_text()


def test_one_repeat_without_subjects_compares_auc_with_delong(tmp_path):
    result = cross_validate(fake_store(subjects_known=False), ["logreg", "svm"], progress=False, backbones=PAIR)
    out = write_run(result, tmp_path / "d", n_boot=50)
    pair = json.loads((out / "metrics.json").read_text())["comparisons"]["pairs"][0]
    y = (result.rows["label"] == 1).astype(int)
    # DeLong (1988) written out: structural components by pairwise comparison of positives with negatives
    scores = [result.oof["logreg"][0], result.oof["svm"][0]]
    pos, neg = y == 1, y == 0
    psi = [(s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :]) for s in scores]
    v10 = np.column_stack([m.mean(axis=1) for m in psi])
    v01 = np.column_stack([m.mean(axis=0) for m in psi])
    cov = np.cov(v10, rowvar=False) / pos.sum() + np.cov(v01, rowvar=False) / neg.sum()
    diff = v10[:, 0].mean() - v10[:, 1].mean()
    z = diff / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert pair["pooled"]["method"] == "DeLong" and pair["pooled"]["diff"] == pytest.approx(diff)
    assert pair["pooled"]["p"] == pytest.approx(2 * st.norm.sf(abs(z)))
    assert "DeLong" in (out / "report.md").read_text()


def test_weights_flags_are_per_head_and_the_banner_names_only_affected_heads(tmp_path):
    store = fake_store()
    result = cross_validate(store, ["logreg", TINY_RESNET, HeadSpec("vgg16", ("vgg16",), "pooled", True, TINY_MLP)],
                            folds=3, progress=False, backbones=PAIR)
    result.provenance["backbones"]["resnet18"].update(weights_kind="random", weights_sha256="")
    result.provenance["backbones"]["vgg16"].update(weights_kind="file", weights="cnmc.pt", weights_sha256="c0ffee" * 10)
    out = write_run(result, tmp_path / "w", n_boot=50)
    data = json.loads((out / "metrics.json").read_text())
    assert data["heads"]["vgg16"]["weights"] == {"vgg16": "FILE c0ffeec0ffee"}
    assert data["heads"]["resnet18"]["weights"] == {"resnet18": "RANDOM"}
    assert data["heads"]["logreg"]["weights"] == {"resnet18": "RANDOM", "vgg16": "FILE c0ffeec0ffee"}
    text = (out / "report.md").read_text()
    banner = text[: text.index("## Results")]
    random_banner = next(line for line in banner.splitlines() if "RANDOM-WEIGHT" in line)
    assert "head(s) `logreg`, `resnet18`:" in random_banner and "`vgg16`" not in random_banner
    file_banner = next(line for line in banner.splitlines() if "WEIGHTS FROM A FILE" in line)
    assert "head(s) `logreg`, `vgg16`:" in file_banner and "`resnet18`" not in file_banner
    assert "| `vgg16` | ours | vgg16 FILE c0ffeec0ffee |" in text
    table = compare_runs([out])
    assert "**RANDOM**" not in next(line for line in table.splitlines() if "`vgg16`" in line)
    assert "**RANDOM**" in next(line for line in table.splitlines() if "`resnet18`" in line)


def test_hyper_parameters_are_recorded_and_reported(grouped_run):
    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    params = data["heads"]["attention-pooled"]["params"]
    assert params["max_epochs"] == 2 and params["attn_dim"] == 8 and params["lr"] == 1e-3
    assert "device" not in params and "progress" not in params and "blocks" not in params
    assert data["heads"]["logreg"]["params"]["logisticregression__C"] == 1.0
    assert "## Head hyper-parameters" in (out / "report.md").read_text()


def test_a_subject_with_both_classes_skips_the_subject_section_but_keeps_the_run(tmp_path):
    result = cross_validate(fake_store(), ["logreg"], folds=3, progress=False, backbones=PAIR)
    result.rows["group"] = result.rows["group"].copy()
    result.rows["group"][:] = "S0"  # one subject holding both classes: no subject-level diagnosis
    out = write_run(result, tmp_path / "mixed", n_boot=50)
    data = json.loads((out / "metrics.json").read_text())
    assert "both classes" in data["subjects"]["skipped"] and not (out / "subjects.csv").exists()
    assert "Not computed: subject 'S0' has cells of both classes" in (out / "report.md").read_text()


def test_latex_and_csv_tables_carry_intervals_fusion_calibration_and_flags(grouped_run):
    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    tex = (out / "report.tex").read_text()
    for label in ("tab:results", "tab:confusion", "tab:uncertainty", "tab:fusion", "tab:calibration"):
        assert f"\\label{{{label}}}" in tex
    assert "holding the fitted models fixed" in tex
    md = (out / "report.md").read_text()
    assert "holds the fitted models fixed" in md and "n counts evaluated images, not augmentation copies" in md
    for head, info in data["heads"].items():  # every head carries its weights flags in the LaTeX tables
        kinds = set(info["weights"].values())
        if len(kinds) == 1:
            assert f"{head} [{kinds.pop()}]" in tex
    rows = read_csv(out / "table_results.csv")
    assert {"corrected_t_ci95_low", "corrected_t_ci95_high", "pooled_oof", "bootstrap_ci95_low",
            "bootstrap_ci95_high"} <= set(rows[0])
    for r in rows:
        u = data["heads"][r["head"]]["uncertainty"][r["metric"]]
        if u["corrected_t"]["lo"] is not None:
            assert float(r["corrected_t_ci95_low"]) == pytest.approx(u["corrected_t"]["lo"], abs=1e-12)
            assert float(r["corrected_t_ci95_high"]) == pytest.approx(u["corrected_t"]["hi"], abs=1e-12)
        if u["pooled"]["bootstrap"]["lo"] is not None:
            assert float(r["bootstrap_ci95_low"]) == pytest.approx(u["pooled"]["bootstrap"]["lo"], abs=1e-12)
    assert any(r["corrected_t_ci95_low"] != "" for r in rows)


def test_subject_level_under_paper_aggregates_original_images_only():
    from fusionfeat.evaluation.evidence import subject_level, subject_scores

    store = fake_store(cells=6)
    result = cross_validate(store, ["logreg"], protocol="paper", progress=False, backbones=PAIR)
    view = np.asarray(result.rows["view"])
    assert np.any(view != 0)  # the paper protocol scored copies
    assert "image-level folds" in subject_level(result, n_boot=50)["left_out"]  # not subject-disjoint: left out
    out = subject_scores(result, "mean", n_boot=50)  # the aggregation itself, had the folds allowed it
    assert out["n_cells"] == [6] * 12  # each subject's 6 cells, not its copies
    originals = view == 0
    groups = np.asarray(result.rows["group"])[originals]
    p = result.oof["logreg"][0][originals]
    for subject, score in zip(out["subject"], out["scores"]["logreg"][0], strict=True):
        assert score == pytest.approx(p[groups == subject].mean(), abs=1e-12)
    boot = out["heads"]["logreg"]["metrics"]["roc_auc"]["bootstrap"]
    assert boot["unit"] == "subject" and boot["n_units"] == 12


# ----------------------------------------------------------------------------------------------- issue 17 reports


def test_compare_names_the_decision_rule_of_an_argmax_and_an_operating_point_run(tmp_path):
    store = fake_store()
    argmax = write_run(cross_validate(store, ["logreg"], folds=3, progress=False, backbones=PAIR),
                       tmp_path / "argmax", n_boot=50)
    sens = cross_validate(store, ["logreg"], folds=3, progress=False, backbones=PAIR, operating_point="sens=0.95")
    sens_dir = write_run(sens, tmp_path / "sens", n_boot=50)
    table = compare_runs([argmax, sens_dir])
    thresholds = [f.threshold for f in sens.fold_results("logreg")]
    mean, sd = np.mean(thresholds), np.std(thresholds, ddof=1)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "`logreg`" in line}
    assert "argmax (P ≥ 0.5)" in rows["`argmax`"] and "sens ≥ 0.95" not in rows["`argmax`"]
    assert f"sens ≥ 0.95 at threshold {mean:.3f} ± {sd:.3f}" in rows["`sens`"]
    runs = {line.split("|")[1].strip(): line for line in table.splitlines() if "| none |" in line}
    assert "argmax (P ≥ 0.5)" in runs["`argmax`"] and "operating point sens ≥ 0.95" in runs["`sens`"]
    assert "**Different decision rules**" in table and "specificity" in table.split("**Different decision rules**")[1]
    md = (sens_dir / "report.md").read_text()
    assert f"- decision rule: operating point sens ≥ 0.95, chosen inside each training fold (`logreg` threshold " \
           f"{mean:.3f} ± {sd:.3f}); calibration: none" in md
    assert f"decision rule operating point sens $\\geq$ 0.95, chosen inside each training fold (logreg threshold " \
           f"{mean:.3f} $\\pm$ {sd:.3f})" in (sens_dir / "report.tex").read_text()
    same = compare_runs([argmax, argmax])
    assert "Different decision rules" not in same and "Different data" not in same


def test_compare_names_calibration_and_different_data(tmp_path):
    store = fake_store()
    plain = cross_validate(store, ["logreg"], folds=3, progress=False, backbones=PAIR)
    plain.provenance.update(layout="cnmc", data_root="/data/C-NMC_2019")
    calibrated = cross_validate(store, ["logreg"], folds=3, progress=False, backbones=PAIR, calibrate="sigmoid")
    calibrated.provenance.update(layout="folders", data_root="/data/ALL_IDB2")
    table = compare_runs([write_run(plain, tmp_path / "a", n_boot=50),
                          write_run(calibrated, tmp_path / "b", n_boot=50)])
    assert "| `a` | C-NMC layout, `C-NMC_2019` (72 images) |" in table
    assert "| `b` | folders layout, `ALL_IDB2` (72 images) |" in table
    assert "sigmoid, fitted inside each training fold" in table and "**Different calibration**" in table
    assert "**Different data**" in table


def _run_data(result, tmp_path, name, **provenance):
    result.provenance.update(provenance)
    return json.loads((write_run(result, tmp_path / name, n_boot=50) / "metrics.json").read_text())


@pytest.mark.parametrize("provenance, different", [
    ({"layout": "cnmc", "data_root": "/x/cnmc"}, False),
    ({"layout": "csv", "data_root": "/work/shared/data/C-NMC_2019_manifest"}, False),
    ({"layout": "allidb", "data_root": "/x/ALL_IDB2"}, True),
    ({"layout": "folders", "data_root": "/x/cells"}, True),
    ({}, True),  # a store that does not record its data is not assumed to be C-NMC
])
def test_table1_gets_a_different_data_note_unless_the_store_is_cnmc(tmp_path, provenance, different):
    from fusionfeat.report import render_report

    result = cross_validate(fake_store(), ["logreg"], folds=3, progress=False, backbones=PAIR)
    for key in ("layout", "data_root"):
        result.provenance.pop(key, None)
    data = _run_data(result, tmp_path, "r", **provenance)
    text = render_report(data)
    results = text[text.index("## Results"): text.index("## Uncertainty")]
    assert "paper, Table 1" in results and "0.9697" in results  # Table 1 is shown either way
    assert ("**Different data.**" in results) == different
    assert ("C-NMC 2019: **different data**" in results) == different
    if not different:  # the fake store's 72 images are not the paper's 10,661
        assert "The paper used all 10,661 C-NMC 2019 training images; this store holds 72 images" in results


def _md_interval(text, head, metric_label):
    section = text[text.index(f"### `{head}`"):]
    row = next(line for line in section.splitlines() if line.startswith(f"| {metric_label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _tex_row(tex, head, metric_label):
    row = next(line for line in tex.splitlines() if line.startswith(f"{head} [") and f"& {metric_label} &" in line)
    return [c.strip() for c in row.removesuffix("\\\\").split("&")]


def test_latex_and_markdown_intervals_agree_when_a_bound_leaves_the_range(grouped_run, tmp_path):
    from fusionfeat.report import render_report
    from fusionfeat.report.latex import write_tables

    _, out = grouped_run
    data = json.loads((out / "metrics.json").read_text())
    u = data["heads"]["logreg"]["uncertainty"]
    u["roc_auc"]["corrected_t"].update(lo=0.5529, hi=1.0773)  # the interval
    u["mcc"]["corrected_t"].update(lo=-1.2, hi=0.4)  # MCC's range is [-1, 1]
    u["accuracy"]["corrected_t"].update(lo=-0.01, hi=0.97)
    md = render_report(data)
    write_tables(data, tmp_path)
    tex = (tmp_path / "report.tex").read_text()
    cases = {"ROC AUC": "[0.5529, 1.0000†]", "MCC": "[-1.0000†, 0.4000]", "accuracy": "[0.0000†, 0.9700]"}
    for label, expected in cases.items():
        md_cells, tex_cells = _md_interval(md, "logreg", label), _tex_row(tex, "logreg", label)
        assert md_cells[2] == expected  # corrected t column
        assert tex_cells[3] == expected.replace("†", "$^\\dagger$")
        assert md_cells[4] == tex_cells[5].replace("$^\\dagger$", "†")  # bootstrap column: the same text
    assert "1.0773" not in md and "1.0773" not in tex
    assert "† marks a bound clipped" in md and "$^\\dagger$: a bound clipped" in tex
    for metric in ("recall", "f1", "specificity"):  # untouched intervals print the same numbers in both
        label = LABELS[metric]
        assert _md_interval(md, "concat", label)[2] == _tex_row(tex, "concat", label)[3].replace("$^\\dagger$", "†")


def _vgg16_file(path):
    import torch

    from fusionfeat.encoders.weights import load_backbone

    torch.save(load_backbone("vgg16", "random", seed=3).trunk.state_dict(), path)
    return path


def test_file_weights_are_flagged_in_every_summary_table(tmp_path):
    import hashlib

    from click.testing import CliRunner

    from fusionfeat.cli import main
    from tests.conftest import write_cells

    data = write_cells(tmp_path / "cells", per_class=6, size=32)
    weights = _vgg16_file(tmp_path / "vgg16_cells.pth")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    store, run_dir = tmp_path / "s.h5", tmp_path / "run"
    runner = CliRunner()
    with one_torch_thread():
        res = runner.invoke(main, ["extract", str(data), "-o", str(store), "--backbones", "resnet18,vgg16",
                                   "--weights", f"vgg16={weights},resnet18=random", "--input-size", "32",
                                   "--quiet", "--workers", "0", "--no-tokens"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["fit", str(store), "--head", "logreg,vgg16", "--folds", "2", "-o", str(run_dir),
                                   "--quiet", "--head-param", "vgg16.max_epochs=2"])
        assert res.exit_code == 0, res.output
    md = (run_dir / "report.md").read_text()
    assert f"| `vgg16` | ours | vgg16 FILE {sha} |" in md
    assert "**Note: WEIGHTS FROM A FILE** in head(s) `vgg16`, `logreg`" in md or \
        "**Note: WEIGHTS FROM A FILE** in head(s) `logreg`, `vgg16`" in md
    tex = (run_dir / "report.tex").read_text()
    assert f"vgg16 [FILE {sha}]" in tex
    assert all("WEIGHTS FROM A FILE in" in line for line in tex.splitlines() if line.startswith("\\caption"))
    table = compare_runs([run_dir])
    row = next(line for line in table.splitlines() if "`vgg16`" in line)
    assert "**FILE**" in row and "RANDOM" not in row and "IMAGENET" not in row
    logreg = next(line for line in table.splitlines() if "`logreg`" in line)
    assert "**RANDOM FILE**" in logreg
    assert f"resnet18 **RANDOM**, vgg16 FILE {sha}" in table  # the runs table, per backbone
    assert "FILE = this head read features from weights loaded from a file" in table
