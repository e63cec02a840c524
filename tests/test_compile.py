"""Compiled trunks (``extract --compile``): when auto compiles, the fixed batch shape, the check against eager, the
store's record, and compiled features equal to eager ones within the precision's tolerance."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import fusionfeat.engines.compiled as compiled_mod
from fusionfeat.cli import main
from fusionfeat.engines.compiled import (
    AMX_MIN_FORWARDS,
    COMPILED,
    TOLERANCE,
    FixedBatch,
    compile_trunks,
    cpu_has_amx,
    relative_deviation,
    wants_compile,
)
from fusionfeat.errors import CompileWarning, FusionfeatError
from fusionfeat.store import FeatureStore
from tests.conftest import one_torch_thread

CPU = torch.device("cpu")
FAST = ["--input-size", "32", "--weights", "random", "--quiet", "--workers", "0", "--batch-size", "3"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def amx(monkeypatch):
    def set_amx(value: bool):
        monkeypatch.setattr(compiled_mod, "cpu_has_amx", lambda: value)
    return set_amx


@pytest.mark.parametrize(("device", "precision", "n", "has_amx", "expected"), [
    ("cpu", "bf16", AMX_MIN_FORWARDS, True, True),
    ("cpu", "bf16", AMX_MIN_FORWARDS - 1, True, False),  # too short to pay the compile back
    ("cpu", "bf16", 10 * AMX_MIN_FORWARDS, False, False),  # AVX-512 / AVX2: no measured gain, stays eager
    ("cpu", "fp32", 10 * AMX_MIN_FORWARDS, True, False),
    ("cuda", "bf16", 10 * AMX_MIN_FORWARDS, True, False),  # not measured on a GPU yet
])
def test_auto_compiles_only_long_bf16_runs_on_amx(amx, device, precision, n, has_amx, expected):
    amx(has_amx)
    assert wants_compile("auto", torch.device(device), precision, n) is expected


def test_on_and_off_are_obeyed_and_other_words_refused(amx):
    amx(False)
    assert wants_compile("on", CPU, "fp32", 1) is True
    amx(True)
    assert wants_compile("off", CPU, "bf16", 10 * AMX_MIN_FORWARDS) is False
    with pytest.raises(FusionfeatError, match="--compile 'yes'"):
        wants_compile("yes", CPU, "bf16", 1)


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx2 avx512f amx_bf16 amx_tile", True),
                                                 ("fpu avx2 avx512f avx512_bf16", False)])
def test_cpu_has_amx_reads_the_flags_line(tmp_path, monkeypatch, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: amx_bf16 in a name only\nflags\t\t: {flags}\n")
    monkeypatch.setattr(compiled_mod, "CPUINFO", str(cpuinfo))
    cpu_has_amx.cache_clear()
    try:
        assert cpu_has_amx() is expected
    finally:
        cpu_has_amx.cache_clear()


class ShapeLog(nn.Module):
    """A per-row module that records the batch sizes it is called with."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.conv(x)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_fixed_batch_pads_or_splits_and_keeps_every_row(n):
    torch.manual_seed(0)
    log = ShapeLog().eval()
    x = torch.randn(n, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = FixedBatch(log, 4)(x)
        log.sizes.clear()
        want = torch.cat([log.conv(row[None]) for row in x])  # row by row: no other row can leak in
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    log.sizes.clear()
    with torch.inference_mode():
        FixedBatch(log, 4)(x)
    assert set(log.sizes) == {4}


def test_relative_deviation_by_hand():
    want = torch.tensor([[2.0, -4.0], [1.0, 0.0]])
    got = torch.tensor([[2.5, -4.0], [1.0, 0.1]])
    assert relative_deviation(got, want) == pytest.approx(0.5 / 4.0)
    assert relative_deviation(torch.zeros(2), torch.zeros(2)) == 0.0


def tiny_trunk(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU and a residual add: what inductor's freezing folds and fuses in ResNet18."""
    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(y + self.bn2(self.conv2(y)))

    trunk = Tiny()
    for bn in (trunk.bn1, trunk.bn2):  # eval statistics that are not the identity, so folding them matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return trunk.eval()


def fake_model(name: str, trunk: nn.Module):
    return SimpleNamespace(trunk=trunk, spec=SimpleNamespace(name=name))


def test_a_failing_compile_stops_on_and_falls_back_to_eager_on_auto(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    models = [fake_model("tiny", tiny_trunk())]
    with pytest.raises(FusionfeatError, match=r"--compile on: torch.compile failed \(RuntimeError: no C\+\+"):
        compile_trunks(models, CPU, "fp32", 2, 16, strict=True)
    with pytest.warns(CompileWarning, match="extracting with eager trunks"):
        runners = compile_trunks(models, CPU, "fp32", 2, 16, strict=False)
    assert not runners.compiled and runners.trunks == [models[0].trunk]
    assert runners.attrs("tiny") == {"compile": "eager"}


def test_a_compiled_trunk_that_differs_from_eager_is_refused(monkeypatch):
    class Shifted(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 1.1  # 10% off: far beyond any precision's tolerance

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Shifted(module))
    models = [fake_model("tiny", tiny_trunk())]
    with pytest.raises(FusionfeatError, match="differs from eager by 0.1 of its largest value"):
        compile_trunks(models, CPU, "fp32", 2, 16, strict=True)
    with pytest.warns(CompileWarning):
        assert not compile_trunks(models, CPU, "fp32", 2, 16, strict=False).compiled


def real_compile_or_skip(models, precision, batch, size):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileWarning)
        runners = compile_trunks(models, CPU, precision, batch, size, strict=False)
    if not runners.compiled:
        pytest.skip(f"torch.compile is unavailable here: {caught[0].message if caught else '?'}")
    return runners


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_features_equal_eager_within_the_precision_tolerance(precision):
    """A real inductor compile with frozen weights (BN folded, ReLU/add fused), on a tiny trunk so it stays cheap."""
    torch._dynamo.reset()
    models = [fake_model("tiny", tiny_trunk())]
    with one_torch_thread():
        runners = real_compile_or_skip(models, precision, 4, 16)
        assert runners.compiled and runners.deviation["tiny"] <= TOLERANCE[precision]
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # a short batch: padded
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            got, want = runners.trunks[0](x).float(), models[0].trunk(x).float()
    assert relative_deviation(got, want) <= TOLERANCE[precision]
    attrs = runners.attrs("tiny")
    assert attrs["compile"] == COMPILED and 0 <= attrs["compile_check"] <= TOLERANCE[precision]


def test_default_extraction_stays_eager_and_keeps_its_settings(tiny_folders, tmp_path):
    store = tmp_path / "s.h5"
    assert run("extract", tiny_folders, "-o", store, "--backbones", "resnet18", *FAST).exit_code == 0
    with FeatureStore.open(store) as fs:
        assert "compile" not in fs.root_attrs()["settings"]  # stores made before --compile still match
        assert fs.attrs("resnet18")["compile"] == "eager"


def test_compile_on_is_recorded_padded_and_refused_on_an_eager_rerun(tiny_folders, tmp_path, monkeypatch):
    """The engine's wiring, with the compiler replaced by a recorder of the shapes it is called with (the real
    compile is tested above): 8 images at batch 3 give batches 3, 3, 2, and the trunk only ever sees 3 rows."""
    sizes: list[int] = []

    class Recorder(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            sizes.append(x.shape[0])
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Recorder(module))
    eager_store, compiled_store = tmp_path / "e.h5", tmp_path / "c.h5"
    assert run("extract", tiny_folders, "-o", eager_store, "--backbones", "resnet18", *FAST,
               "--compile", "off").exit_code == 0
    result = run("extract", tiny_folders, "-o", compiled_store, "--backbones", "resnet18", *FAST, "--compile", "on")
    assert result.exit_code == 0, result.output
    assert set(sizes) == {3}
    with FeatureStore.open(eager_store) as e, FeatureStore.open(compiled_store) as c:
        assert c.root_attrs()["settings"]["compile"] == COMPILED
        assert c.attrs("resnet18")["compile"] == COMPILED and c.attrs("resnet18")["compile_check"] == 0.0
        np.testing.assert_allclose(c.pooled("resnet18"), e.pooled("resnet18"), rtol=1e-5, atol=1e-6)
    info = run("info", compiled_store)
    assert "(compiled: inductor, frozen weights; pooled within 0 of eager)" in info.output
    again = run("extract", tiny_folders, "-o", compiled_store, "--backbones", "resnet18", *FAST, "--compile", "off")
    assert again.exit_code == 2 and "other settings" in again.output


@pytest.mark.slow
def test_compiled_weights_are_frozen_constants():
    """Freezing took effect: the compiled graph holds its own (folded, prepacked) copy of the weights, so changing
    the module's parameters afterwards does not reach it (an unfrozen graph reads them at every call)."""
    torch._dynamo.reset()
    models = [fake_model("tiny", tiny_trunk(2))]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with one_torch_thread():
        runners = real_compile_or_skip(models, "fp32", 4, 16)
        with torch.inference_mode():
            before = runners.trunks[0](x).clone()
            models[0].trunk.conv1.weight.mul_(-1.0)
            after = runners.trunks[0](x)
            changed = models[0].trunk(x)
    torch.testing.assert_close(after, before)
    assert not torch.allclose(changed, before, atol=1e-3)


def test_the_report_says_compiled_only_for_compiled_trunks():
    from fusionfeat.report.markdown import _features_section

    attrs = {"weights_kind": "random", "input_size": 224, "normalization": "imagenet", "views": 1,
             "precision": "bf16", "device": "cpu (2 threads)"}
    data = {"provenance": {"backbones": {"a": {**attrs, "compile": COMPILED, "compile_check": 0.002},
                                         "b": {**attrs, "compile": "eager"}, "c": attrs}}, "features": "pooled"}
    rows = {line.split("|")[1].strip(): line for line in _features_section(data).splitlines() if line.startswith("| `")}
    assert "| bf16 (compiled) |" in rows["`a`"]
    assert "| bf16 |" in rows["`b`"] and "| bf16 |" in rows["`c`"]  # eager, and stores made before the option


@pytest.mark.parametrize(("first", "auto_would_compile"), [("off", True), ("on", False)])
def test_auto_follows_what_an_existing_store_recorded(tiny_folders, tmp_path, monkeypatch, first,
                                                      auto_would_compile):
    """A store made eager (e.g. before --compile existed) is complete for a rerun whose auto would now compile,
    and a compiled one for a rerun whose auto would not: auto never refuses finished work for its compile."""
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    store = tmp_path / "s.h5"
    args = ["extract", tiny_folders, "-o", store, "--backbones", "resnet18", *FAST]
    assert run(*args, "--compile", first).exit_code == 0
    monkeypatch.setattr("fusionfeat.engines.extract.wants_compile", lambda *a: auto_would_compile)
    again = run(*args)
    assert again.exit_code == 0 and "already complete" in again.output, again.output


def test_a_short_batch_under_inference_mode_does_not_recompile(monkeypatch):
    """The padded batch is made inside ``inference_mode`` (an inference tensor, another dispatch key set than the
    loader's batches): without care dynamo compiled the whole trunk again for the last, short batch (17 s)."""
    from torch._dynamo.testing import CompileCounter

    counter, real_compile = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: real_compile(module, backend=counter,
                                                                                dynamic=False))
    torch._dynamo.reset()
    trunk = FixedBatch(compiled_mod.Frozen(tiny_trunk()), 4)
    full, short = (torch.randn(n, 3, 8, 8).contiguous(memory_format=torch.channels_last) for n in (4, 3))
    with torch.inference_mode():
        trunk(full)
        trunk(short)
        trunk(torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last))  # made in inference mode
    assert counter.frame_count == 1


def test_many_compiled_trunks_in_one_process_are_all_compiled(monkeypatch):
    """Each trunk instance is its own compile of the same forward code (guards on its frozen parameters); past
    dynamo's default limit of 8 per code object it would silently run eager while the store said compiled."""
    from torch._dynamo.testing import CompileCounter

    counter, real_compile = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: real_compile(module, backend=counter,
                                                                                dynamic=False))
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        for seed in range(12):
            torch.manual_seed(seed)
            trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
            compiled_mod.Frozen(trunk)(x)
    assert counter.frame_count == 12
