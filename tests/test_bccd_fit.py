"""`fit` on real multi-class data: a few BCCD white-cell crops per class (copied into tmp; Basophil has 3 images in
the dataset, fewer than the 5 folds), 64-px inputs, resnet18 and vgg16 with random weights (two backbones: the
fusion heads need them, and a pair of heads gives the paired comparisons). The run completes with a warning
naming basophil, and report.md, predictions.csv and metrics.json agree with each other and with scikit-learn;
`--classes` subset and merge runs come from the same store without re-extraction. Skips when ../shared/data lacks
the crops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from fusionfeat.cli import main
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.usefixtures("single_torch_thread"), pytest.mark.slow]

BCCD = SHARED_DATA / "BCCD_WBC"
PER_CLASS = 8  # images copied per class (Basophil has 3)
CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def bccd_store(tmp_path_factory) -> Path:
    if not BCCD.is_dir():
        pytest.skip(f"needs the BCCD white-cell crops at {BCCD} (real data kept outside the repo; absent here)")
    root = tmp_path_factory.mktemp("bccd")
    data = root / "wbc"
    for folder in sorted(p for p in BCCD.iterdir() if p.is_dir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(image, data / folder.name / image.name)
    got = CliRunner().invoke(main, ["extract", str(data), "-o", str(root / "wbc.h5"), "--backbones", "resnet18,vgg16",
                                    "--weights", "random", "--input-size", "64", "--device", "cpu", "--quiet"])
    assert got.exit_code == 0, got.output
    return root / "wbc.h5"


def _fit(store: Path, out: Path, *extra: str) -> str:
    got = CliRunner().invoke(main, ["fit", str(store), "--head", "resnet18,logreg", "--cv", "stratified", "-o",
                                    str(out), "--device", "cpu", "--quiet", "--head-param", "*.max_epochs=5",
                                    *extra])
    assert got.exit_code == 0, got.output
    return got.output


def test_fit_on_bccd_reports_five_classes_and_warns_about_basophil(bccd_store, tmp_path):
    output = _fit(bccd_store, tmp_path / "run")
    warned = [line for line in output.splitlines() if line.startswith("warning:") and "basophil" in line]
    assert len(warned) == 1 and "'basophil' has 3 images for 5 folds" in warned[0]
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert data["classes"] == CLASSES and list(data["heads"]) == ["resnet18", "logreg"]
    text = (tmp_path / "run" / "report.md").read_text()
    top = text.split("## Results")[0]
    assert "> **Note: rare classes.** 'basophil' has 3 images for 5 folds" in top
    assert "(35 usable images: basophil 3, eosinophil 8, lymphocyte 8, monocyte 8, neutrophil 8; 0 skipped" in top
    for section in ("## Per class", "## Confusion matrices (5×5, out-of-fold)", "## Macro figures with 95% intervals",
                    "## Paired head comparisons"):
        assert section in text
    assert "Precision is n/a when the head never predicted the class." in text
    for binary_word in ("sensitivity", "specificity", "p(positive)", "positive class **"):
        assert binary_word not in text.lower()

    # predictions.csv: K probabilities per head summing to 1; macro OvR AUC by scikit-learn equals the report's
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    y = np.array([CLASSES.index(c) for c in pred["label"]])
    for head in data["heads"]:
        P = pred[[f"p_{c}_{head}" for c in CLASSES]].to_numpy()
        np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-9)
        auc = skm.roc_auc_score(y, P, multi_class="ovr", average="macro", labels=range(5))
        pooled = data["heads"][head]["uncertainty"]["roc_auc_macro"]["pooled"]
        assert pooled["mean"] == pytest.approx(auc, abs=1e-12)
        boot = pooled["bootstrap"]
        assert boot["lo"] <= pooled["mean"] <= boot["hi"]
        assert f"{pooled['mean']:.4f} | [{boot['lo']:.4f}, {boot['hi']:.4f}]" in text
        # the 5×5 confusion in the report is the predictions' own, row by row
        cm = skm.confusion_matrix(y, [CLASSES.index(c) for c in pred[f"pred_{head}"]], labels=range(5))
        assert data["heads"][head]["pooled"]["confusion"] == cm.tolist()
        row = f"| basophil | {cm[0, 0]} ({cm[0, 0] / 3:.2f}) | {cm[0, 1]} ({cm[0, 1] / 3:.2f}) |"
        assert row in text
    pair = data["comparisons"]["pairs"][0]
    assert (pair["a"], pair["b"]) == ("resnet18", "logreg")


def test_classes_subset_and_merge_from_the_same_store(bccd_store, tmp_path):
    _fit(bccd_store, tmp_path / "four", "--classes", "Neutrophil,Eosinophil,Lymphocyte,Monocyte")
    text = (tmp_path / "four" / "report.md").read_text()
    assert "**4 classes**" in text and "3 images of other classes left out" in text
    assert "(32 usable images: eosinophil 8, lymphocyte 8, monocyte 8, neutrophil 8; 0 skipped at extraction)" \
        in text
    assert "rare classes" not in text

    _fit(bccd_store, tmp_path / "two", "--classes",
         "granulocyte=Neutrophil+Eosinophil+Basophil,mononuclear=Lymphocyte+Monocyte")
    data = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert data["classes"] == ["granulocyte", "mononuclear"] and data["positive"] == "mononuclear"
    pred = pd.read_csv(tmp_path / "two" / "predictions.csv")
    y = (pred["label"] == "mononuclear").to_numpy()
    assert y.sum() == 16
    for head in data["heads"]:
        auc = skm.roc_auc_score(y, pred[f"p_mononuclear_{head}"])
        assert data["heads"][head]["uncertainty"]["roc_auc"]["pooled"]["mean"] == pytest.approx(auc, abs=1e-12)
