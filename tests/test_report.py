"""The run folder: files, the paper's numbers beside ours, and the warnings a reader must not miss."""

from __future__ import annotations

import csv
import json
from functools import partial

import numpy as np
import pytest

from fusionfeat.errors import FusionfeatError
from fusionfeat.estimators import HeadSpec, TorchHeadClassifier
from fusionfeat.evaluate import cross_validate
from fusionfeat.report import compare_runs, describe_weights, write_run
from tests.conftest import one_torch_thread
from tests.test_evaluate import RECORDER, fake_store

TINY_ATTENTION = HeadSpec(
    "attention-pooled",
    ("resnet18", "vgg16"),
    "pooled",
    True,
    partial(TorchHeadClassifier, architecture="attention-pooled", max_epochs=2, hidden=16, attn_dim=8),
)


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    store = fake_store()
    with one_torch_thread():
        result = cross_validate(store, ["logreg", TINY_ATTENTION], folds=3, repeats=2, progress=False)
    return result, write_run(result, tmp_path_factory.mktemp("run") / "grouped")


def test_write_run_writes_every_file(grouped_run):
    result, out = grouped_run
    for name in ("metrics.json", "predictions.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "confusion_attention-pooled.png",
        "confusion_logreg.png",
        "history_attention-pooled.png",
        "roc_all.png",
        "roc_attention-pooled.png",
        "roc_logreg.png",
    ]
    for png in out.glob("*.png"):
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
    np.testing.assert_allclose([float(r["p_all_logreg"]) for r in first], result.oof["logreg"][1], atol=1e-6)
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
    assert "95% confidence intervals over 2 repeats" in text
    assert "RANDOM" not in text and "LEAKY" not in text
    assert "![logreg ROC per fold](roc_logreg.png)" in text
    assert "Fusion weights" in text


def test_random_weights_and_leaky_protocol_are_flagged_at_the_top(tmp_path):
    store = fake_store()
    store.weights_kind = "random"
    result = cross_validate(store, ["logreg"], protocol="paper", progress=False)
    text = (write_run(result, tmp_path / "paper") / "report.md").read_text()
    head = text[: text.index("## Results")]
    assert "**WARNING: RANDOM-WEIGHT FEATURES.**" in head and "NOT comparable" in head
    assert "**WARNING: LEAKY PROTOCOL (`paper`).**" in head and "BEFORE the split" in head
    assert "**RANDOM** (seed 0), not ImageNet" in text


def test_random_warning_only_for_backbones_the_heads_used(tmp_path):
    store = fake_store()
    result = cross_validate(store, [RECORDER], progress=False)
    result.provenance["backbones"]["resnet18"]["weights_kind"] = "random"
    text = (write_run(result, tmp_path / "r") / "report.md").read_text()
    assert "RANDOM-WEIGHT" not in text  # the recorder reads only the `ident` backbone


def test_unknown_subjects_make_an_image_level_note(tmp_path):
    result = cross_validate(fake_store(subjects_known=False), ["logreg"], progress=False)
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
    leaky = write_run(cross_validate(store, ["logreg"], protocol="paper", progress=False), tmp_path / "leaky")
    table = compare_runs([grouped, leaky])
    assert "`grouped`" in table and "`leaky`" in table
    assert "**LEAKY RANDOM**" in table
    assert table.count("`logreg`") == 2 and "`attention-pooled`" in table
    with pytest.raises(FusionfeatError, match="not a fusionfeat run folder"):
        compare_runs([tmp_path])
