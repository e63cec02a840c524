"""Extraction at the CPU's pace: resnet18 + vgg16, eager against compiled (frozen weights), as fractions of the bf16
GEMM peak measured in the same run.

In one process (under 5 minutes on the 2-core AMX machine when it is quiet):

* the machine: CPU flags, load average, torch threads; the GEMM peak (``torch.mm`` on 2048² matrices, best of
  5) in the run's precision, measured again before every repeat (the fractions use the best of all);
* ``compute``: each trunk alone and both together on pre-decoded, pre-normalised channels_last batches through
  ``fusionfeat.encoders.embed`` (tokens kept, as the engine keeps them), eager and compiled the way
  ``extract --compile on`` compiles (``fusionfeat.engines.compiled``: inductor, frozen weights, one batch shape);
  the first compile runs with an empty inductor cache (a fresh ``TORCHINDUCTOR_CACHE_DIR``, unless
  ``--warm-cache``): what a user's first long run pays;
* ``e2e``: ``fusionfeat.engines.extract.extract`` of both backbones into a temporary store with ``--compile off``
  and ``on``: total rate, and the batch loop's rate (compile and assembly apart);
* ``--profile``: one profiled forward per trunk and mode, the largest operators' share of its time.

Weights are random (throughput does not depend on them; nothing is downloaded). Variants are interleaved repeat by
repeat (the order rotates) so machine noise hits them alike.

    python benchmarks/amx_pace.py --n 64 --repeats 2 --profile
"""

from __future__ import annotations

import os
import sys
import tempfile

if "--warm-cache" not in sys.argv:  # before torch reads it: the first compile is a user's first compile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ff-inductor-")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

# benchmarks/common.py: the script folder is on sys.path
from common import benchmark_parser, flops_per_image, run_header, subset_manifest, write_report  # noqa: E402

import fusionfeat.engines.extract as engine  # noqa: E402
from fusionfeat.data.images import Preprocess, normalize_batch  # noqa: E402
from fusionfeat.encoders import RANDOM, embed, load_backbone  # noqa: E402
from fusionfeat.engines.compiled import compile_trunks  # noqa: E402
from fusionfeat.errors import RandomWeightsWarning  # noqa: E402
from fusionfeat.runtime import autocast, resolve_precision  # noqa: E402

INPUT_SIZE = 224
BACKBONES = ("resnet18", "vgg16")


def parse_args(argv: list[str] | None = None):
    parser = benchmark_parser(__doc__, "image folder (default: <repo>/../shared/data/ALL_IDB2)")
    parser.add_argument("--n", type=int, default=64, help="images (evenly spaced over the dataset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--no-e2e", action="store_true", help="compute-only (skip the two engine runs)")
    parser.add_argument("--profile", action="store_true", help="also profile one forward per trunk and mode")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the usual inductor cache (default: an empty one, so the compile time is a first's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.n, args.batch_size, args.repeats, args.gemm_size) < 1:
        parser.error("--n, --batch-size, --repeats and --gemm-size must be at least 1")
    return args


def gemm_peak(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of ``torch.mm`` on ``size``² matrices over ``repeats`` calls (after one warm-up)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_all(trunks, batches, precision: str) -> float:
    """Seconds for every trunk on every batch (pooled + fp16 tokens, as the engine keeps them)."""
    start = time.perf_counter()
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        for x in batches:
            for trunk in trunks:
                embed(trunk, x)
    return time.perf_counter() - start


class Steps:
    """Wall time of the engine's steps (trunk preparation = compile, batch loop, assembly), by wrapping them."""

    NAMES = {"_prepare_trunks": "compile", "_run_batches": "batches", "assemble": "assemble"}

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def active(self):
        originals = {name: getattr(engine, name) for name in self.NAMES}

        def timed(name, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds[self.NAMES[name]] = time.perf_counter() - start
            return wrapper

        for name, fn in originals.items():
            setattr(engine, name, timed(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(engine, name, fn)


def run_e2e(manifest, args, precision: str, compile_: str, workdir: Path) -> dict:
    config = engine.ExtractConfig(
        backbones=list(BACKBONES), weights=dict.fromkeys(BACKBONES, RANDOM), preprocess=Preprocess(
            input_size=INPUT_SIZE), device="cpu", precision=precision, batch_size=args.batch_size, overwrite=True,
        progress=False, dedupe=True, compile=compile_)
    out = workdir / f"e2e-{compile_}.h5"
    steps = Steps()
    with steps.active():
        start = time.perf_counter()
        engine.extract(manifest, out, config)
        seconds = time.perf_counter() - start
    out.unlink()
    return {"seconds": seconds, **steps.seconds}


def profile_shares(trunk, x, precision: str, top: int = 6) -> list[tuple[str, float]]:
    """The ``top`` operators by self CPU time in one forward, as shares of the forward's total."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        embed(trunk, x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            embed(trunk, x)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    return [(k, t / total) for k, t in sorted(events, key=lambda e: -e[1])[:top]]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.simplefilter("ignore", RandomWeightsWarning)  # random on purpose: speed does not depend on weights
    report = run_header("benchmarks/amx_pace.py", argv)
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    print(f"precision {precision}; input {INPUT_SIZE} px; batch {args.batch_size}; {args.n} images; inductor cache "
          f"{'usual' if args.warm_cache else 'empty (fresh) at start'}", flush=True)
    manifest = subset_manifest(args.data, args.n)
    pre = Preprocess(input_size=INPUT_SIZE)
    images = torch.cat([pre.load(str(manifest.absolute(s)))[0] for s in manifest.samples])
    mean, std = pre.mean_std()
    batches = [normalize_batch(images[i:i + args.batch_size], mean, std).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(images), args.batch_size)]
    models = [load_backbone(b, RANDOM) for b in BACKBONES]
    for m in models:
        m.trunk.eval().to(memory_format=torch.channels_last)
    flops = {m.spec.name: flops_per_image(m.trunk, INPUT_SIZE) for m in models}
    flops["both"] = sum(flops.values())
    print("FLOP/image (FlopCounterMode): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in flops.items()))
    peaks = [gemm_peak(dtype, args.gemm_size)]
    print(f"GEMM peak {precision} {args.gemm_size}²: {peaks[0] / 1e9:.1f} GFLOP/s", flush=True)

    start = time.perf_counter()
    runners = compile_trunks(models, device, precision, args.batch_size, INPUT_SIZE, strict=True)
    compile_s = time.perf_counter() - start
    print(f"compile (both trunks, frozen weights, batch {args.batch_size}): {compile_s:.1f} s; pooled vs eager on the "
          "check batch: " + ", ".join(f"{k} {v:.2g}" for k, v in runners.deviation.items()), flush=True)
    modes = {"eager": [m.trunk for m in models], "compiled": runners.trunks}
    forward_all(modes["eager"], batches[:1], precision)  # oneDNN primitives for the eager shapes, untimed

    jobs = [("compute", mode, which) for mode in modes for which in (*BACKBONES, "both")]
    if not args.no_e2e:
        jobs += [("e2e", mode, "both") for mode in modes]
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ff-pace-") as tmp:
        for r in range(args.repeats):
            if r:
                peaks.append(gemm_peak(dtype, args.gemm_size))
            shift = r % len(jobs)
            for kind, mode, which in jobs[shift:] + jobs[:shift]:
                if kind == "compute":
                    chosen = modes[mode] if which == "both" else [modes[mode][BACKBONES.index(which)]]
                    run = {"seconds": forward_all(chosen, batches, precision)}
                else:
                    run = run_e2e(manifest, args, precision, "on" if mode == "compiled" else "off", Path(tmp))
                run["peak"] = peaks[-1]
                results.setdefault((kind, mode, which), []).append(run)
                extra = "".join(f", {k} {run[k]:.1f} s" for k in ("compile", "batches", "assemble") if k in run)
                print(f"  repeat {r + 1} {kind:>7} {mode:>8} {which:>8}: {len(images) / run['seconds']:6.2f} img/s"
                      f"{extra}", flush=True)
    peaks.append(gemm_peak(dtype, args.gemm_size))
    peak = max(peaks)

    rows = []
    print(f"\nGEMM peak {precision}: best {peak / 1e9:.1f} GFLOP/s (per repeat and end: "
          + ", ".join(f"{p / 1e9:.0f}" for p in peaks) + ")")
    print("\n| variant | trunks | mode | img/s (median) | min–max | GFLOP/s | of the GEMM peak "
          "| of the repeat's peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for (kind, mode, which), runs in results.items():
        rates = [len(images) / r["seconds"] for r in runs]
        if kind == "e2e":  # the batch loop alone: compile and assembly apart
            loop = [len(images) / r["batches"] for r in runs]
        median = statistics.median(rates)
        gflops = median * flops[which] / 1e9
        paired = statistics.median(rt * flops[which] / r["peak"] for rt, r in zip(rates, runs, strict=True))
        rows.append({"variant": kind, "trunks": which, "mode": mode, "images_per_s": rates,
                     "of_peak": gflops * 1e9 / peak, "of_repeat_peak": paired,
                     **({"batch_loop_images_per_s": loop} if kind == "e2e" else {})})
        print(f"| {kind} | {which} | {mode} | {median:.2f} | {min(rates):.2f}–{max(rates):.2f} | {gflops:.0f} | "
              f"{gflops * 1e9 / peak:.2f} | {paired:.2f} |")
        if kind == "e2e":
            lm = statistics.median(loop)
            print(f"| e2e, batch loop only | {which} | {mode} | {lm:.2f} | {min(loop):.2f}–{max(loop):.2f} | "
                  f"{lm * flops[which] / 1e9:.0f} | {lm * flops[which] / peak:.2f} | |")

    def med(kind, mode, which="both"):
        runs = results.get((kind, mode, which))
        return statistics.median(len(images) / r["seconds"] for r in runs) if runs else None

    print()
    for mode in modes:
        c, e = med("compute", mode), med("e2e", mode)
        if e:
            loop = statistics.median(len(images) / r["batches"] for r in results[("e2e", mode, "both")])
            print(f"{mode}: end to end / compute-only {e / c:.2f} (batch loop alone {loop / c:.2f}; target >= 0.9)")
        print(f"{mode}: compute-only / GEMM peak {c * flops['both'] / peak:.2f} (target >= 0.5)")
    saved = 1 / med("compute", "eager") - 1 / med("compute", "compiled")
    if saved > 0:
        print(f"compiled saves {saved * 1e3:.1f} ms per image: the {compile_s:.0f} s compile pays back after "
              f"{compile_s / saved:,.0f} images")
    else:
        print("compiled saved nothing per image here: it never pays back")
    if args.profile:
        print("\nprofile, one forward of a batch, largest operators by self CPU time:")
        for mode, trunks in modes.items():
            for name, trunk in zip(BACKBONES, trunks, strict=True):
                shares = profile_shares(trunk, batches[0], precision)
                print(f"  {name} {mode}: " + ", ".join(f"{k} {s:.0%}" for k, s in shares))
    load = os.getloadavg()
    print(f"load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report.update(precision=precision, n=len(images), batch_size=args.batch_size, flops=flops, gemm_peaks=peaks,
                  compile_s=compile_s, compile_check=runners.deviation, rows=rows, load_average_end=list(load))
    if not args.warm_cache:
        shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
