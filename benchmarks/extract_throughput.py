"""Extraction throughput: end-to-end ``fusionfeat.engines.extract`` against compute-only and a naive per-image loop.

Three variants, measured in one process and interleaved repeat by repeat (so machine noise hits them alike):

* ``e2e``: the whole ``fusionfeat.engines.extract.extract(...)`` call into a temporary store: model set-up, decoding in
  loader workers, every backbone on each batch, fp16 tokens + pooled vectors committed as batch files, and the
  final HDF5 assembly. The split (set-up / batches / assembly) is timed by wrapping the engine's steps.
* ``compute``: the same trunks (``load_backbone``) on pre-decoded, pre-normalised tensors, same batch size, same
  precision, channels_last, ``inference_mode``: the ceiling for the engine on this machine.
* ``naive``: what img2vec-style tools do: per image, PIL open → Resize(224, 224) → ToTensor → Normalize → each
  plain torchvision model (classifier removed) at batch 1, fp32, contiguous, ``no_grad``.

Weights are random (seeded): throughput does not depend on weight values, and no download is needed.

    python benchmarks/extract_throughput.py                       # 64 ALL-IDB2 images, 3 repeats, precision auto
    python benchmarks/extract_throughput.py --precision auto,bf16 --n 16 --repeats 1
    python benchmarks/extract_throughput.py --variants e2e --batch-size 16,32,64 --workers 1,2 --n 64 --repeats 2

Lists (``--precision``, ``--batch-size``, ``--workers``) give one configuration each, all interleaved in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

# benchmarks/common.py: the script folder is on sys.path
from common import benchmark_parser, flops_per_image, run_header, run_trunks, subset_manifest, write_report

import fusionfeat.engines.extract as engine
from fusionfeat.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize_batch
from fusionfeat.data.manifest import Manifest
from fusionfeat.encoders import RANDOM, load_backbone
from fusionfeat.runtime import resolve_device, resolve_precision

VARIANTS = ("e2e", "compute", "compile", "naive")
DEFAULT_VARIANTS = ("e2e", "compute", "naive")
INPUT_SIZE = 224


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, "image folder (default: <repo>/../shared/data/ALL_IDB2)")
    parser.add_argument("--n", type=int, default=64, help="images to use (evenly spaced over the dataset)")
    parser.add_argument("--naive-n", type=int, default=None, help="images for the naive loop (default: --n)")
    parser.add_argument("--backbones", default="resnet18,vgg16")
    parser.add_argument("--batch-size", default="32", help="comma list of batch sizes for e2e and compute")
    parser.add_argument("--workers", default="default",
                        help="comma list of loader worker counts for e2e ('default': the engine's choice)")
    parser.add_argument("--precision", default="auto",
                        help="comma list of precisions for e2e and compute (auto, fp32, bf16); naive is always fp32")
    parser.add_argument("--no-tokens", action="store_true", help="e2e without the token maps (pooled only)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma list of e2e, compute, compile (compute with torch.compile'd trunks), naive")
    parser.add_argument("--compile", action="store_true",
                        help="add the 'compile' variant (torch.compile of the trunks)")
    parser.add_argument("--threads", default="default",
                        help="comma list of torch thread counts; every job runs at each ('default': torch's)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="square matrix size for the GEMM peak")
    parser.add_argument("--gemm-repeats", type=int, default=5, help="GEMM peak: best of this many torch.mm calls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.compile and "compile" not in args.variants:
        args.variants.append("compile")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        parser.error(f"--variants: choose among {', '.join(VARIANTS)}")
    try:
        args.batch_sizes = [int(b) for b in args.batch_size.split(",") if b.strip()]
        args.workers = [None if w.strip() == "default" else int(w) for w in args.workers.split(",") if w.strip()]
        args.threads = [torch.get_num_threads() if t.strip() == "default" else int(t)
                        for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error("--batch-size, --workers and --threads take comma lists of integers ('default': the usual)")
    if not args.threads or min(args.threads) < 1 or args.gemm_size < 1 or args.gemm_repeats < 1:
        parser.error("--threads, --gemm-size and --gemm-repeats must be at least 1")
    if args.n < 1 or args.repeats < 1 or not args.batch_sizes or min(args.batch_sizes) < 1 or not args.workers:
        parser.error("--n, --repeats and --batch-size must be at least 1")
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    return args


# ---------------------------------------------------------------------------------------------- variants


class _StepTimer:
    """Times the engine's steps (model set-up, batches, assembly) by wrapping its module-level functions.

    Instrumentation only: the wrapped functions are called unchanged. If the engine renames them, the
    split is reported as unavailable and the total is still timed.
    """

    STEPS = {"load_backbone": "setup", "_run_batches": "batches", "assemble": "assemble"}

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.available = all(hasattr(engine, name) for name in self.STEPS)

    @contextlib.contextmanager
    def active(self):
        if not self.available:
            yield
            return
        originals = {name: getattr(engine, name) for name in self.STEPS}

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    step = self.STEPS[name]
                    self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start
            return wrapper

        for name, fn in originals.items():
            setattr(engine, name, timed(name, fn))
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(engine, name, fn)


def run_e2e(manifest: Manifest, args, precision: str, batch_size: int, workers: int | None, workdir: Path) -> dict:
    config = engine.ExtractConfig(
        backbones=args.backbones, weights={b: RANDOM for b in args.backbones}, seed=args.seed,
        preprocess=Preprocess(input_size=INPUT_SIZE), tokens=not args.no_tokens, device="cpu",
        precision=precision, batch_size=batch_size, workers=workers, overwrite=True, progress=False,
        dedupe=True,  # ALL-IDB2 holds one duplicate image
    )
    out = workdir / "e2e.h5"
    timer = _StepTimer()
    with timer.active():
        start = time.perf_counter()
        result = engine.extract(manifest, out, config)
        seconds = time.perf_counter() - start
    if result.n_computed != len(manifest) or result.n_skipped:
        raise RuntimeError(f"e2e computed {result.n_computed} of {len(manifest)} images, skipped {result.n_skipped}")
    size = out.stat().st_size
    out.unlink()
    split = {k: round(v, 3) for k, v in timer.seconds.items()} if timer.available else None
    return {"seconds": seconds, "images": len(manifest), "split": split, "store_bytes": size}


def predecode(manifest: Manifest, batch_size: int) -> list[torch.Tensor]:
    """Decoded, normalised, channels_last float batches of the manifest (outside any timing)."""
    preprocess = Preprocess(input_size=INPUT_SIZE)
    images = torch.stack([preprocess.load(str(manifest.absolute(s)))[0] for s in manifest.samples])
    images = images.reshape(-1, 3, INPUT_SIZE, INPUT_SIZE)
    mean, std = preprocess.mean_std()
    return [normalize_batch(images[i:i + batch_size], mean, std).contiguous(memory_format=torch.channels_last)
            for i in range(0, len(images), batch_size)]


def load_trunks(args) -> list[torch.nn.Module]:
    trunks = []
    for name in args.backbones:
        trunk = load_backbone(name, RANDOM, args.seed).trunk
        trunks.append(trunk.to(memory_format=torch.channels_last))
    return trunks


def run_compute(batches: list[torch.Tensor], trunks: list[torch.nn.Module], precision: str) -> dict:
    return run_trunks(batches, trunks, torch.device("cpu"), precision)


def naive_models(args) -> list[torch.nn.Module]:
    """Plain torchvision models, classifier removed, as img2vec-style tools use them (fp32, contiguous)."""
    models = []
    torch.manual_seed(args.seed)
    for name in args.backbones:
        model = getattr(torchvision.models, name)(weights=None)
        if hasattr(model, "fc"):
            model.fc = torch.nn.Identity()
        else:
            model.classifier = torch.nn.Identity()
        models.append(model.eval())
    return models


def naive_transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((INPUT_SIZE, INPUT_SIZE)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def run_naive(paths: list[str], models: list[torch.nn.Module], transform) -> dict:
    from PIL import Image

    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as image:
                x = transform(image.convert("RGB")).unsqueeze(0)
            for model in models:
                model(x).numpy()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(paths)}


# ---------------------------------------------------------------------------------------------- reporting


def rate(run: dict) -> float:
    return run["images"] / run["seconds"]


def summarise(runs: list[dict]) -> dict:
    rates = [rate(r) for r in runs]
    out = {"img_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
           "runs": [round(x, 3) for x in rates]}
    splits = [r["split"] for r in runs if r.get("split")]
    if splits:
        out["split_s"] = {k: round(statistics.median(s[k] for s in splits if k in s), 3)
                          for k in splits[0]}
        out["seconds"] = round(statistics.median(r["seconds"] for r in runs), 3)
    return out


def job_key(variant: str, precision: str, batch_size: int | None = None, workers: int | None = None,
            threads: int | None = None) -> str:
    t = f" t{threads}" if threads is not None else ""
    if variant == "naive":
        return "naive fp32 b1" + t
    key = f"{variant} {precision} b{batch_size}"
    return key + (f" w{'default' if workers is None else workers}" if variant == "e2e" else "") + t


# ---------------------------------------------------------------------------------------------- roofline


def gemm_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best FLOP/s of ``torch.mm`` on ``size``² square matrices over ``repeats`` calls (after one warm-up)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def compile_trunks(trunks: list[torch.nn.Module], examples: list[torch.Tensor], precision: str,
                   thread_counts: list[int]):
    """``torch.compile`` of each trunk, compiled by warm-up calls on each batch shape at each thread count
    (inductor specialises to both: a new one recompiles): (trunks, seconds) or (None, error)."""
    start = time.perf_counter()
    before = torch.get_num_threads()
    try:
        compiled = [torch.compile(t) for t in trunks]
        for threads in thread_counts:
            torch.set_num_threads(threads)
            run_trunks(examples, compiled, torch.device("cpu"), precision)
    except Exception as exc:  # noqa: BLE001 - an unavailable compiler is a result, not a crash
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        torch.set_num_threads(before)
    return compiled, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    manifest = subset_manifest(args.data, args.n)
    naive_paths = [str(manifest.absolute(s)) for s in manifest.samples][: args.naive_n or args.n]
    device = resolve_device("cpu")
    requested = [p.strip() for p in args.precision.split(",") if p.strip()]
    precisions = list(dict.fromkeys(resolve_precision(p, device) for p in requested))
    header = run_header("benchmarks/extract_throughput.py", argv)
    machine = header["machine"]
    engine_workers = engine.default_workers(device)
    native = "present" if machine["cpu_bf16"] else "absent"
    print(f"precision: requested {args.precision} -> {', '.join(precisions)} "
          f"(auto -> {resolve_precision('auto', device)}: native bf16 {native})")
    print(f"data: {args.data} ({len(manifest)} images, naive {len(naive_paths)}), "
          f"backbones {','.join(args.backbones)}, input {INPUT_SIZE}, batch {args.batch_size}, "
          f"workers {','.join('default' if w is None else str(w) for w in args.workers)} "
          f"(engine default here: {engine_workers}), threads {','.join(map(str, args.threads))}, "
          f"tokens {'off' if args.no_tokens else 'on'}, random weights (seed {args.seed}), repeats {args.repeats}")
    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()

    jobs = []  # (variant, precision, batch size, workers, threads), interleaved within each repeat
    for threads in args.threads:
        for precision in precisions:
            for batch_size in args.batch_sizes:
                if "e2e" in args.variants:
                    jobs += [("e2e", precision, batch_size, w, threads) for w in args.workers]
                for variant in ("compute", "compile"):
                    if variant in args.variants:
                        jobs.append((variant, precision, batch_size, None, threads))
        if "naive" in args.variants:
            jobs.append(("naive", "fp32", 1, None, threads))

    # The arithmetic limit, in this process: GEMM peak per precision and thread count; FLOPs from the models.
    flops = {}
    for name in args.backbones:
        flops[name] = flops_per_image(load_backbone(name, RANDOM, args.seed).trunk, INPUT_SIZE)
    flop_per_image = sum(flops.values())
    peaks: dict[str, float] = {}
    gemm_dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if machine["cpu_bf16"] else {})}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, dtype in gemm_dtypes.items():
            peaks[f"{name} t{threads}"] = gemm_peak(dtype, args.gemm_size, args.gemm_repeats)
            print(f"GEMM peak {name}, {threads} thread(s), {args.gemm_size}^2: "
                  f"{peaks[f'{name} t{threads}'] / 1e9:.1f} GFLOP/s", flush=True)
    print("FLOP/image (FlopCounterMode, one forward at 224): "
          + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in flops.items()) + f"; total {flop_per_image / 1e9:.2f} G")

    # Set-up outside the timings: decoded batches and models for compute/naive. A short warm-up of each variant
    # and precision takes one-time costs (imports, oneDNN kernel selection, page cache) off the first repeat.
    computes = {"compute", "compile"} & set(args.variants)
    batches = {b: predecode(manifest, b) for b in args.batch_sizes} if computes else {}
    trunks = load_trunks(args) if computes else []
    models = naive_models(args) if "naive" in args.variants else []
    transform = naive_transform()
    compiled, compile_info = {}, {}
    if "compile" in args.variants:
        for precision in precisions:
            compiled[precision], compile_info[precision] = compile_trunks(
                trunks, list({tuple(x.shape): x for bs in batches.values() for x in bs}.values()), precision,
                args.threads)
            print(f"torch.compile ({precision}): " + (f"compiled in {compile_info[precision]:.1f} s"
                  if compiled[precision] else f"unavailable ({compile_info[precision]})"), flush=True)
        jobs = [j for j in jobs if j[0] != "compile" or compiled[j[1]]]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        workdir = Path(tmp)
        warm = Manifest(manifest.root, manifest.samples[:2], manifest.classes, manifest.layout)
        for precision in precisions:
            if "e2e" in args.variants:
                run_e2e(warm, args, precision, 2, args.workers[0], workdir)
            if "compute" in args.variants:
                run_compute([batches[args.batch_sizes[0]][0][:2]], trunks, precision)
        if "naive" in args.variants:
            run_naive(naive_paths[:1], models, transform)

        for r in range(args.repeats):
            shift = r % len(jobs)  # rotate the order so no variant always runs first or last
            for variant, precision, batch_size, workers, threads in jobs[shift:] + jobs[:shift]:
                torch.set_num_threads(threads)
                if variant == "e2e":
                    run = run_e2e(manifest, args, precision, batch_size, workers, workdir)
                elif variant == "compute":
                    run = run_compute(batches[batch_size], trunks, precision)
                elif variant == "compile":
                    run = run_compute(batches[batch_size], compiled[precision], precision)
                else:
                    run = run_naive(naive_paths, models, transform)
                key = job_key(variant, precision, batch_size, workers, threads)
                results.setdefault(key, []).append(run)
                print(f"  repeat {r + 1}/{args.repeats} {key:26s}: {run['images'] / run['seconds']:6.2f} img/s "
                      f"({run['seconds']:.1f} s)" + (f" split {run['split']}" if run.get("split") else ""), flush=True)
    for threads in args.threads:  # again after the jobs: the peak is the best of both (load drifts)
        torch.set_num_threads(threads)
        for name, dtype in gemm_dtypes.items():
            key = f"{name} t{threads}"
            peaks[key] = max(peaks[key], gemm_peak(dtype, args.gemm_size, args.gemm_repeats))
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()

    summary = {key: summarise(runs) for key, runs in results.items()}
    for variant, precision, batch_size, workers, threads in jobs:  # fractions of the arithmetic limit
        s = summary[job_key(variant, precision, batch_size, workers, threads)]
        peak = peaks.get(f"{precision} t{threads}")
        s["gflop_s"] = s["img_per_s"] * flop_per_image / 1e9
        s["of_gemm_peak"] = s["img_per_s"] * flop_per_image / peak if peak else None
    ratios = {}
    for variant, precision, batch_size, workers, threads in jobs:
        if variant != "e2e":
            continue
        label = job_key(variant, precision, batch_size, workers, threads)
        e2e = summary[label]["img_per_s"]
        compute_key = job_key("compute", precision, batch_size, None, threads)
        naive_key = job_key("naive", "fp32", None, None, threads)
        for name, other_key in (("compute", compute_key), ("naive", naive_key)):
            other = summary.get(other_key)
            if other:
                mine, theirs = results[label], results[other_key]
                paired = [rate(a) / rate(b) for a, b in zip(mine, theirs, strict=True)]
                ratios[f"{label} / {name}"] = {"of_medians": e2e / other["img_per_s"],
                                              "paired_median": statistics.median(paired),
                                              "paired": [round(x, 3) for x in paired]}

    print()
    print("| variant | precision | batch | workers | threads | img/s (median) | min–max | GFLOP/s | of GEMM peak "
          "| e2e split s: setup / batches / assembly |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for variant, precision, batch_size, workers, threads in jobs:
        s = summary[job_key(variant, precision, batch_size, workers, threads)]
        split = s.get("split_s")
        split_text = " / ".join(f"{split.get(k, float('nan')):.2f}" for k in ("setup", "batches", "assemble")) \
            if split else ""
        shown_workers = "" if variant != "e2e" else (f"{engine_workers} (default)" if workers is None else workers)
        frac = f"{s['of_gemm_peak']:.2f}" if s["of_gemm_peak"] is not None else "n/a"
        print(f"| {variant} | {precision} | {batch_size} | {shown_workers} | {threads} | {s['img_per_s']:.2f} "
              f"| {s['min']:.2f}–{s['max']:.2f} | {s['gflop_s']:.1f} | {frac} | {split_text} |")
    print()
    print("GEMM peak (best before/after the jobs): " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
          + " (naive runs fp32: its fraction is of the fp32 peak)")
    # Ratios two ways: of the medians, and the median of per-repeat ratios (variants of one repeat ran minutes
    # apart at most, so pairing them cancels slow drifts in the machine's load).
    for name, value in ratios.items():
        target = 0.9 if name.endswith("compute") else 2.5
        verdict = "met" if min(value["of_medians"], value["paired_median"]) >= target else "NOT met"
        print(f"{name}: {value['of_medians']:.2f} of medians, {value['paired_median']:.2f} paired median "
              f"(per repeat {value['paired']}) (target >= {target}: {verdict})")
    for variant, precision, batch_size, workers, threads in jobs:
        if variant in ("compute", "compile"):
            s = summary[job_key(variant, precision, batch_size, workers, threads)]
            if s["of_gemm_peak"] is not None:
                verdict = "met" if s["of_gemm_peak"] >= 0.75 else "NOT met"
                print(f"{job_key(variant, precision, batch_size, workers, threads)} / GEMM peak: "
                      f"{s['of_gemm_peak']:.2f} (target >= 0.75: {verdict})")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores")

    report = {
        **header, "machine": machine, "data": str(args.data), "n": len(manifest), "naive_n": len(naive_paths),
        "backbones": args.backbones, "input_size": INPUT_SIZE, "batch_sizes": args.batch_sizes,
        "workers": args.workers, "engine_default_workers": engine_workers, "threads": args.threads,
        "tokens": not args.no_tokens, "precision_requested": args.precision, "precisions": precisions,
        "weights": f"random (seed {args.seed})", "repeats": args.repeats,
        "flop_per_image": {**flops, "total": flop_per_image}, "gemm_peak_flop_s": peaks,
        "gemm_size": args.gemm_size, "compile_s": compile_info,
        "summary": summary, "ratios": ratios, "load_average": [load_before[0], load_after[0]],
    }
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
