"""The package's public names resolve, the CLI lists every command, and the Python API takes paths as well as
objects (closing what it opened), refuses anything else in one line, and gives its results as DataFrames."""

from __future__ import annotations

import csv
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

import fusionfeat
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.metrics import METRICS
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.store import FeatureStore
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")
PAIR = ("resnet18", "vgg16")


@pytest.mark.parametrize("name", fusionfeat.__all__)
def test_public_names_resolve(name):
    assert getattr(fusionfeat, name) is not None


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        fusionfeat.nope  # noqa: B018


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "fusionfeat", "--help"], capture_output=True, text=True, check=True)
    for command in ("manifest", "extract", "info", "fit", "report", "train", "predict", "demo"):
        assert command in out.stdout


# --- the API on a real store: 10 + 10 cells and one duplicate left out by --dedupe ----------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    cells = write_cells(root / "cells", per_class=10, size=40)
    shutil.copyfile(cells / "hem" / "cell_001.png", cells / "hem" / "zz_same_as_001.png")
    config = fusionfeat.ExtractConfig(backbones=list(PAIR), weights=dict.fromkeys(PAIR, "random"),
                                      preprocess=fusionfeat.Preprocess(input_size=32), workers=0, progress=False,
                                      dedupe=True)
    with pytest.warns(UserWarning, match="RANDOM"):
        fusionfeat.extract(fusionfeat.build_manifest(cells), root / "s.h5", config)
    return root / "s.h5"


def open_files() -> int:
    """HDF5 files this process holds open."""
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


def without_times(result) -> list[dict[str, float]]:
    return [{k: v for k, v in f.metrics.items() if not k.endswith("_time")} for f in result.folds]


def test_cross_validate_takes_a_path_and_closes_it(store):
    before = open_files()
    by_str = fusionfeat.cross_validate(str(store), ["logreg"], folds=3, progress=False)
    by_path = fusionfeat.cross_validate(store, "logreg", folds=3, progress=False)
    assert open_files() == before
    with FeatureStore.open(store) as fs:
        by_object = fusionfeat.cross_validate(fs, ["logreg"], folds=3, progress=False)
        assert not fs.closed  # the caller's store stays open
    assert without_times(by_str) == without_times(by_path) == without_times(by_object)
    with pytest.raises(FusionfeatError, match="unknown head"):
        fusionfeat.cross_validate(store, ["alexnet"], progress=False)
    assert open_files() == before  # closed on the error path too


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def closed_store(path: Path) -> FeatureStore:
    fs = FeatureStore.open(path)
    fs.close()
    return fs


@pytest.mark.parametrize("call", [
    lambda s: fusionfeat.cross_validate(s, ["logreg"], progress=False),
    lambda s: fusionfeat.run_study(s, ["logreg"], progress=False),
    lambda s: fusionfeat.train_head(s, "logreg", progress=False),
])
@pytest.mark.parametrize("bad, message", [
    (123, "expected a feature store"),
    ({"labels": [0, 1]}, "expected a feature store"),
    ("missing.h5", "no feature store at"),
    ("closed", "is closed"),
])
def test_a_wrong_store_is_one_line(store, tmp_path, call, bad, message):
    if bad == "missing.h5":
        bad = tmp_path / bad
    elif bad == "closed":
        bad = closed_store(store)
    with pytest.raises(FusionfeatError) as excinfo:
        call(bad)
    assert message in one_line(excinfo)


@pytest.mark.parametrize("heads", [None, 3, {"logreg"}, ["logreg", 3]])
def test_heads_of_a_wrong_type_are_one_line(store, heads):
    with pytest.raises(FusionfeatError, match="give head names") as excinfo:
        fusionfeat.cross_validate(store, heads, progress=False)
    one_line(excinfo)


def test_run_study_opens_a_path(store):
    before = open_files()
    with pytest.raises(FusionfeatError, match=f"{store.name} has 1: re-extract with --views dihedral8"):
        fusionfeat.run_study(store, ["logreg"], progress=False)
    assert open_files() == before


def test_usable_rows_leave_out_the_duplicate(store):
    with FeatureStore.open(store) as fs:
        rows = fs.usable_rows()
        dup = list(fs.paths).index("hem/zz_same_as_001.png")
        assert dup not in rows and len(rows) == fs.n_samples - 1 == 20
        frame = fs.samples_frame()
        assert list(frame.index) == list(rows)
        assert list(frame["label"]) == [fs.classes[k] for k in fs.labels[rows]]
        assert list(frame["path"]) == list(fs.paths[rows])
        everything = fs.samples_frame(usable_only=False)
        assert len(everything) == fs.n_samples
        assert everything.loc[dup, "error"] == "duplicate of hem/cell_001.png" and not everything.loc[dup, "ok"]
        assert fs.pooled("vgg16", index=rows).shape[0] == len(rows)
    result = fusionfeat.cross_validate(store, ["logreg"], folds=3, progress=False)
    assert sorted(set(result.rows["sample"].tolist())) == rows.tolist()  # what CV evaluates


@pytest.fixture(scope="module")
def cv(store):
    return fusionfeat.cross_validate(store, ["logreg", "svm"], folds=3, repeats=2, progress=False)


def test_to_frame_has_one_row_per_fit(cv):
    frame = cv.to_frame()
    assert len(frame) == 2 * 3 * 2
    assert list(frame.columns[:5]) == ["head", "repeat", "fold", "n_train", "n_test"]
    for f, row in zip(cv.folds, frame.itertuples(index=False), strict=True):
        assert (row.head, row.repeat, row.fold, row.n_train, row.n_test) == (f.head, f.repeat, f.fold, f.n_train,
                                                                              f.n_test)
        for m in METRICS:
            assert getattr(row, m) == pytest.approx(f.metrics[m], nan_ok=True)


def test_fold_metrics_recompute_from_the_predictions_frame(cv):
    """Each fit's AUC and accuracy, recomputed with scikit-learn from the out-of-fold rows it scored."""
    preds = cv.predictions_frame()
    assert len(preds) == 2 * 2 * len(cv.rows["sample"])
    for row in cv.to_frame().itertuples(index=False):
        scored = preds[(preds["head"] == row.head) & (preds["repeat"] == row.repeat) & (preds["fold"] == row.fold)]
        assert len(scored) == row.n_test
        truth = scored["label"] == cv.positive
        assert roc_auc_score(truth, scored["proba"]) == pytest.approx(row.roc_auc)
        assert accuracy_score(scored["label"], scored["predicted"]) == pytest.approx(row.accuracy)


def test_predictions_frame_lines_up_with_the_store(cv, store):
    preds = cv.predictions_frame()
    with FeatureStore.open(store) as fs:
        assert list(preds["label"]) == [fs.classes[k] for k in fs.labels[preds["sample"]]]
        assert list(preds["path"]) == list(fs.paths[preds["sample"]])
    first = preds[(preds["head"] == "svm") & (preds["repeat"] == 1)]
    assert np.array_equal(first["proba"].to_numpy(), cv.oof["svm"][1])


def test_metrics_table_is_mean_and_sd_over_fits(cv):
    table, frame = cv.metrics_table(), cv.to_frame()
    assert list(table.index) == ["logreg", "svm"]
    for head in table.index:
        fits = frame[frame["head"] == head]
        assert table.loc[head, "n_fits"] == len(fits) == 6
        for m in METRICS:
            assert table.loc[head, f"{m}_mean"] == pytest.approx(statistics.fmean(fits[m]))
            assert table.loc[head, f"{m}_sd"] == pytest.approx(statistics.stdev(fits[m]))


# --- train and predict from paths -------------------------------------------------------------------------------


def test_train_head_takes_a_path(store):
    before = open_files()
    est, spec, info = fusionfeat.train_head(store, "logreg", progress=False)
    assert open_files() == before
    with FeatureStore.open(store) as fs:
        again, _, _ = fusionfeat.train_head(fs, "logreg", progress=False)
        X = feature_matrix(fs, spec, fs.usable_rows())
    assert np.array_equal(est.predict_proba(X), again.predict_proba(X))
    assert info["training"]["n_images"] == 20
    with pytest.raises(FusionfeatError, match="one head"):
        fusionfeat.train_head(store, ["logreg"], progress=False)


@pytest.fixture(scope="module")
def bundle(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "model"
    path = fusionfeat.train_bundle(store, "logreg", out, progress=False)
    assert path == out and (out / "bundle.json").is_file()
    return out


def test_train_bundle_checks_the_output_rule(store, bundle):
    with pytest.raises(FusionfeatError, match="overwrite") as excinfo:
        fusionfeat.train_bundle(store, "logreg", bundle, progress=False)
    one_line(excinfo)
    with pytest.raises(FusionfeatError) as excinfo:  # never inside the store's own path
        fusionfeat.train_bundle(store, "logreg", store, progress=False)
    one_line(excinfo)


def test_predict_takes_a_bundle_path_and_a_folder(store, bundle, tmp_path):
    cells = store.parent / "cells"
    out = tmp_path / "labels.csv"
    counts = fusionfeat.predict_images(str(bundle), str(cells / "all"), out, device="cpu", workers=0, progress=False)
    frame = counts.to_frame()
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(frame["path"]) == [r["path"] for r in rows] == [str(p) for p in sorted((cells / "all").iterdir())]
    assert list(frame["label"]) == [r["label"] for r in rows]
    assert np.allclose(frame["p_all"], [float(r["p_all"]) for r in rows], atol=1e-6)
    assert counts == {"hem": int((frame["label"] == "hem").sum()), "all": int((frame["label"] == "all").sum()),
                      "error": 0}
    assert counts.path == out
    # a Bundle object and a list of files give the same probabilities
    files = [cells / "all" / name for name in ("cell_000.png", "cell_001.png")]
    again = fusionfeat.predict_images(fusionfeat.load_bundle(bundle), files, tmp_path / "two.csv", device="cpu",
                                      workers=0, progress=False).to_frame()
    assert np.allclose(again["p_all"], frame["p_all"][:2])


@pytest.mark.parametrize("bad_bundle, images, message", [
    (123, "cells", "expected a bundle"),
    ("nowhere", "cells", "is not a fusionfeat bundle"),
    ("bundle", 7, "expected images"),
    ("bundle", [], "no images given"),
    ("bundle", "nothing-here", "no such file or folder"),
])
def test_predict_refuses_in_one_line(store, bundle, tmp_path, bad_bundle, images, message):
    bad_bundle = bundle if bad_bundle == "bundle" else (tmp_path / bad_bundle if isinstance(bad_bundle, str)
                                                        else bad_bundle)
    images = store.parent / images if isinstance(images, str) else images
    with pytest.raises(FusionfeatError) as excinfo:
        fusionfeat.predict_images(bad_bundle, images, tmp_path / "out.csv", device="cpu", progress=False)
    assert message in one_line(excinfo)
    assert not any(tmp_path.iterdir())  # refused before anything was written, not even a lock file
