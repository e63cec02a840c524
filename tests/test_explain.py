"""Where attention looks: attention maps checked by hand against the attention formula, kept out of fold
by the CV loop, and drawn over the cell images by ``fusionfeat explain``."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.heads.modules import AttentionFusion
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.report import write_run
from fusionfeat.report.attention import load_attention
from fusionfeat.store import FeatureStore
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def hand_attention(mha: torch.nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head from the module's in-projection, (B, heads, Tq, Tk)."""
    d, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    Q = q @ w[:d].T + b[:d]
    K = kv @ w[d : 2 * d].T + b[d : 2 * d]
    split = lambda t: t.reshape(t.shape[0], t.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
    return torch.softmax(split(Q) @ split(K).transpose(-1, -2) / math.sqrt(d // h), dim=-1)


def branches(module: AttentionFusion, x: torch.Tensor) -> list[torch.Tensor]:
    return [p(m) + e for p, m, e in zip(module.proj, module.inputs(x), module.embed, strict=True)]


@pytest.mark.parametrize("blocks", [((4, 6), (9, 5)), ((4, 6), (1, 3), (9, 5))])
def test_attention_maps_match_the_attention_formula(blocks):
    torch.manual_seed(0)
    module = AttentionFusion(blocks, dim=16, n_heads=4).eval()
    x = torch.randn(3, sum(t * c for t, c in blocks))
    with torch.no_grad():
        before = module(x)
        maps = module.attention_maps(x)
        after = module(x)
        seqs = branches(module, x)
        k = len(blocks)
        expected = {j: [] for j in range(k)}
        for i in range(k):
            others = [j for j in range(k) if j != i]
            context = torch.cat([seqs[j] for j in others], dim=1)
            weights = hand_attention(module.attn[i], seqs[i], context)  # (B, H, Tq, Tk)
            _, theirs = module.attn[i](seqs[i], context, context, need_weights=True, average_attn_weights=False)
            torch.testing.assert_close(theirs, weights, rtol=1e-5, atol=1e-6)  # the formula is torch's
            assert torch.all(weights >= 0)
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))  # per query, over context
            mass = weights.mean(dim=(1, 2))  # over heads and queries
            start = 0
            for j in others:
                expected[j].append(mass[:, start : start + blocks[j][0]])
                start += blocks[j][0]
    torch.testing.assert_close(before, after)  # forward unchanged
    assert sorted(maps) == list(range(k))
    for j in range(k):
        assert maps[j].shape == (3, blocks[j][0])
        assert torch.all(maps[j] >= 0)
        torch.testing.assert_close(maps[j], torch.stack(expected[j]).mean(0), rtol=1e-5, atol=1e-6)
    total = sum(m.sum(dim=1) for m in maps.values())
    torch.testing.assert_close(total, torch.full((3,), k / (k - 1)))  # each query branch hands out mass 1


def test_pooled_attention_has_no_maps():
    module = AttentionFusion(((1, 4), (1, 4)), variant="pooled", dim=8, n_heads=2)
    with pytest.raises(FusionfeatError, match="spatial"):
        module.attention_maps(torch.zeros(2, 8))


def test_estimator_exposes_maps_only_for_spatial_attention():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 4 * 3 + 4 * 5)).astype(np.float32)
    y = np.arange(24) % 2
    est = TorchHeadClassifier(blocks=((4, 3), (4, 5)), architecture="attention-spatial", attn_dim=8, attn_heads=2,
                              hidden=8, max_epochs=2, random_state=0, device="cpu").fit(X, y)
    maps = est.attention_maps(X[:5])
    assert [m.shape for m in maps] == [(5, 4), (5, 4)]
    np.testing.assert_allclose([m.sum(1) for m in maps], 1.0, rtol=1e-5)
    mlp = TorchHeadClassifier(blocks=((1, 32),), max_epochs=1, device="cpu").fit(X, y)
    assert not hasattr(mlp, "attention_maps")


# ----------------------------------------------------------------------------------------------- runs


def tiny_head(name: str, architecture: str, backbones: tuple[str, ...], inputs: str) -> HeadSpec:
    build = partial(TorchHeadClassifier, architecture=architecture, max_epochs=2, hidden=16, attn_dim=16,
                    attn_heads=2)
    return HeadSpec(name, backbones, inputs, True, build)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    data = write_cells(root / "cells", per_class=6, size=48)
    path = root / "s.h5"
    result = run("extract", data, "-o", path, "--weights", "random", "--input-size", "64", "--quiet",
                 "--workers", "0", "--backbones", "resnet18,vgg16")
    assert result.exit_code == 0, result.output
    spatial = tiny_head("attention-spatial", "attention-spatial", ("resnet18", "vgg16"), "tokens")
    with FeatureStore.open(path) as fs:
        res = cross_validate(fs, [spatial], folds=2, repeats=2, progress=False, device="cpu")
    return write_run(res, root / "run"), data


def test_cv_loop_saves_out_of_fold_maps(run_dir):
    out, _ = run_dir
    arrays = load_attention(out)
    maps = arrays["map/attention-spatial/resnet18"]
    assert maps.shape == (2, 12, 4) and np.all(np.isfinite(maps)) and np.all(maps >= 0)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-4)
    assert tuple(arrays["grid/vgg16"]) == (2, 2)
    assert arrays["path"].dtype.kind == "U" and len(arrays["path"]) == 12


def test_explain_writes_montages(run_dir, tmp_path):
    out, _ = run_dir
    result = run("explain", out, "-o", tmp_path / "png", "--n", "2")
    assert result.exit_code == 0, result.output
    pngs = {p.name for p in (tmp_path / "png").glob("*.png")}
    arrays = load_attention(out)
    p = arrays["p/attention-spatial"].mean(0)
    truth, said = arrays["label"] == 1, p >= 0.5  # classes ["hem", "all"], positive "all"
    expected = {name for name, rows in [("attention_confident_all.png", truth & said),
                                        ("attention_confident_hem.png", ~truth & ~said),
                                        ("attention_worst_errors.png", truth != said)] if rows.any()}
    assert pngs == expected and len(pngs) >= 2
    assert sorted(result.output.split()) == sorted(str(tmp_path / "png" / n) for n in pngs)
    for p in (tmp_path / "png").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_refusals(run_dir, tmp_path):
    out, data = run_dir
    with FeatureStore.open(out.parent / "s.h5") as fs:
        plain = write_run(cross_validate(fs, ["logreg"], folds=2, progress=False), tmp_path / "logreg")
    result = run("explain", plain)
    assert result.exit_code == 2 and "no attention-spatial head" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = run("explain", out, "-o", tmp_path / "x", "--data-root", tmp_path / "nowhere")
    assert result.exit_code == 2 and "is gone" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_overlays_use_a_perceptual_colour_map_with_a_colour_bar(run_dir, tmp_path, monkeypatch):
    import fusionfeat.explain as explain

    out, _ = run_dir
    figures = []
    draw = explain._montage
    monkeypatch.setattr(explain, "_montage", lambda *a: figures.append(draw(*a)) or figures[-1])
    explain.explain_run(out, tmp_path / "png", n=2)
    assert figures
    for fig in figures:
        overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name != "gray"
                    and im.get_array().ndim == 2]
        bars = [ax for ax in fig.axes if ax.get_ylabel() == "attention mass per token"]
        assert overlays and all(im.get_cmap().name == "viridis" for im in overlays)
        assert len(bars) == len(overlays)  # one colour bar per overlay
        for bar, im in zip(bars, overlays, strict=True):
            low, high = im.get_clim()
            labels = [t.get_text() for t in bar.get_yticklabels()]
            assert labels[0] == f"{low:.3f}" and labels[-1] == f"{high:.3f}"
            assert labels[1] == f"1/T={(low + high) / 2:.3f}"  # the bar is centred on uniform attention


def test_explain_never_writes_into_the_data_folder(run_dir, tmp_path):
    """Montages inside DATA would be read back as cell images by the next manifest or extract: refused."""
    out, data = run_dir
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    for target in (data / "montages", data / "all" / "montages", data / "hem" / "x" / "y"):
        result = run("explain", out, "-o", target, "--n", "1")
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "inside the input" in lines[0], result.output
    assert {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()} == before
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_dir()) == ["all", "hem"]
