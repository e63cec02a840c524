"""Figures a paper can use: the pooled ROC and its bootstrap band checked against scikit-learn and worked
examples, the summary figure's legend, the training curves' mean and band, and the run folder's layout."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
from matplotlib.colors import to_hex
from sklearn.metrics import roc_auc_score, roc_curve

from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.report import write_run
from fusionfeat.report.cells import interval
from fusionfeat.report.figures import VALIDATION, epoch_stats, head_colours, summary_figure, training_figure
from fusionfeat.report.roc_bands import GRID, curve_at_grid, mean_curve, roc_band, roc_points, run_bands
from tests.conftest import one_torch_thread
from tests.test_evaluate import PAIR, fake_store


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_are_scikit_learns_roc_with_every_threshold(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.7 + 0.3 * y, 2)  # ties on purpose
    fpr, tpr = roc_points(y, p)
    ref_fpr, ref_tpr, _ = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    p_nan = p.copy()
    p_nan[:10] = np.nan  # rows a repeat did not score are left out
    np.testing.assert_allclose(roc_points(y, p_nan)[1], roc_curve(y[10:], p[10:], drop_intermediate=False)[1])
    assert roc_points(np.ones(5, int), np.arange(5.0)) == (None, None)


def test_curve_at_grid_is_the_upper_step_of_a_worked_example():
    y = np.array([1, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    # thresholds from the top: TPR 1/3, 2/3 at FPR 0; 2/3 at FPR 1/3; 1 at FPR 1/3; then FPR 2/3, 1
    curve = curve_at_grid(y, p)
    at = {0: 2 / 3, 40: 2 / 3, 66: 2 / 3, 67: 1.0, 100: 1.0, 200: 1.0}  # GRID[66] = 0.33 < 1/3 < GRID[67]
    assert {i: curve[i] for i in at} == pytest.approx(at)
    area = np.trapezoid(curve, GRID)
    assert roc_auc_score(y, p) == pytest.approx(8 / 9)  # 8 of the 9 (ALL, HEM) pairs ranked right
    assert area == pytest.approx(8 / 9, abs=0.01)  # the step curve's area is the AUC, up to the grid


def test_mean_curve_averages_repeats():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    a, b = rng.random(200) + 0.4 * y, rng.random(200)
    np.testing.assert_allclose(mean_curve(y, np.stack([a, a])), curve_at_grid(y, a))
    np.testing.assert_allclose(mean_curve(y, np.stack([a, b])), (curve_at_grid(y, a) + curve_at_grid(y, b)) / 2)


def test_band_resamples_whole_clusters_and_holds_the_curve():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    p = rng.random((2, 120)) + 0.5 * y
    plain = roc_band(y, p, None, n_boot=100, seed=7)
    # each row its own cluster, names in row order: the same resamples as resampling rows
    ones = roc_band(y, p, np.array([f"{i:04d}" for i in range(120)]), n_boot=100, seed=7)
    np.testing.assert_allclose(ones.lo, plain.lo)
    np.testing.assert_allclose(ones.hi, plain.hi)
    # every row twice, the copies in one cluster: duplicating rows leaves every ROC unchanged, so resampling
    # the pairs gives exactly the band of resampling the rows
    twice = roc_band(np.repeat(y, 2), np.repeat(p, 2, axis=1), np.repeat([f"{i:04d}" for i in range(120)], 2),
                     n_boot=100, seed=7)
    np.testing.assert_allclose(twice.tpr, plain.tpr)
    np.testing.assert_allclose(twice.lo, plain.lo)
    np.testing.assert_allclose(twice.hi, plain.hi)
    assert plain.n_boot == 100 and np.all(plain.lo <= plain.hi)
    inside = (plain.lo <= plain.tpr + 1e-12) & (plain.tpr <= plain.hi + 1e-12)
    assert inside.mean() > 0.9  # a percentile band need not hold the estimate everywhere, but nearly so
    assert (plain.hi - plain.lo)[20] > 0.05  # at FPR 0.1 the resamples disagree


def test_epoch_stats_worked_example():
    folds = [
        {"history": [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5},
                     {"epoch": 3, "train_loss": 0.2}]},
        {"history": [{"epoch": 1, "train_loss": 0.8}, {"epoch": 2, "train_loss": 0.7}]},
        {"history": [{"epoch": 1, "train_loss": 0.6}, {"epoch": 2, "train_loss": None}]},
    ]
    epochs, mean, sd, count = epoch_stats(folds, "train_loss")
    assert epochs.tolist() == [1, 2, 3] and count.tolist() == [3, 2, 1]
    np.testing.assert_allclose(mean, [0.8, 0.6, 0.2])
    np.testing.assert_allclose(sd, [np.std([1.0, 0.8, 0.6], ddof=1), np.std([0.5, 0.7], ddof=1), 0.0])


def test_head_colours_are_distinct():
    for n in (2, 7, 10, 14):
        heads = [f"h{i}" for i in range(n)]
        assert len({to_hex(c) for c in head_colours(heads).values()}) == n


TINY_MLP = partial(TorchHeadClassifier, architecture="mlp", max_epochs=3, hidden=8)


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    with one_torch_thread():
        result = cross_validate(fake_store(), ["logreg", HeadSpec("resnet18", ("resnet18",), "pooled", True, TINY_MLP),
                                               HeadSpec("concat", PAIR, "pooled", True, TINY_MLP)],
                                folds=3, repeats=3, progress=False, backbones=PAIR)
    out = write_run(result, tmp_path_factory.mktemp("fig") / "run", n_boot=100)
    return result, out, json.loads((out / "metrics.json").read_text())


def test_run_folder_holds_two_figures_and_details_in_a_subfolder(run3):
    _, out, data = run3
    assert sorted(p.name for p in out.glob("*.png")) == ["summary.png", "training.png"]
    assert data["plots"]["summary"] == "summary.png" and data["plots"]["roc_logreg"] == "figures/roc_logreg.png"
    for key, rel in data["plots"].items():
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    md = (out / "report.md").read_text()
    assert "![ROC of every head](summary.png)" in md and "![training curves](training.png)" in md
    assert "early-stopping validation split" in md


def test_summary_figure_legend_is_one_readable_entry_per_head(run3):
    result, _, data = run3
    fig = summary_figure(data, run_bands(result, n_boot=50))
    overview = fig.axes[0]
    texts = [t.get_text() for t in overview.get_legend().get_texts()]
    assert len(texts) == len(data["heads"]) == 3  # not one entry per fold and repeat
    assert all(t.get_fontsize() >= 8 for t in overview.get_legend().get_texts())
    for head, text in zip(data["heads"], texts, strict=True):
        pooled = data["heads"][head]["uncertainty"]["roc_auc"]["pooled"]
        boot = pooled["bootstrap"]
        assert text == f"{head}  AUC {pooled['mean']:.3f} {interval(boot['lo'], boot['hi'], 'roc_auc', digits=3)}"
    colours = {to_hex(line.get_color()) for line in overview.get_lines() if line.get_label() in texts}
    assert len(colours) == 3
    # each head's curve is the mean over repeats of its pooled out-of-fold ROC
    y = (np.asarray(result.rows["label"]) == 1).astype(int)
    line = next(line for line in overview.get_lines() if line.get_label() == texts[0])
    np.testing.assert_allclose(line.get_ydata(), np.mean([curve_at_grid(y, r) for r in result.oof["logreg"]], 0))
    assert "3 repeats" in fig.get_suptitle() and "subjects" in fig.get_suptitle()
    assert len(fig.axes) == 1 + 3  # the overview and one banded panel per head


def test_training_figure_pools_every_fold_and_repeat(run3):
    _, _, data = run3
    fig = training_figure(data)
    torch_heads = [h for h, i in data["heads"].items() if i.get("is_torch")]
    assert len(fig.axes) == 2 * len(torch_heads)
    titles = [ax.get_title() for ax in fig.axes]
    assert all("9 fits" in t for t in titles)  # 3 folds × 3 repeats, not repeat 0 only
    assert VALIDATION in " ".join(t.get_text() for t in fig.legends[0].get_texts())
    ax = fig.axes[0]
    folds = data["heads"][torch_heads[0]]["folds"]
    train = next(line for line in ax.get_lines() if line.get_label().startswith("training rows"))
    epochs, mean, _, _ = epoch_stats(folds, "train_loss")
    np.testing.assert_allclose(train.get_ydata(), mean)
    first = [f["history"][0]["train_loss"] for f in folds]
    assert mean[0] == pytest.approx(np.mean(first)) and len(first) == 9
    assert not math.isnan(mean[-1])
