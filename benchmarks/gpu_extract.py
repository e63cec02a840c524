"""GPU extraction at scale: start-up vs steady state of the real engine, compute-only ceilings, a profile summary.

On one GPU (or, for a dry run, the CPU with a tiny ``--n``):

1. builds a symlink farm in ``.devdata/`` (ignored) that replicates ALL-IDB2 to ``--n`` images under distinct
   names, and a Manifest over it;
2. compute-only: the bare trunks on random on-device tensors at the same batch size, both backbones and resnet18
   alone (pooled + fp16 tokens brought to the host, as the engine does);
3. end to end: ``fusionfeat.engines.extract.extract`` on the farm, timing each batch as the engine yields it: start-up
   (model build, workers, first decode and forward) apart from the steady rate over the batches after warm-up,
   with a ``torch.profiler`` window over ``--profile-batches`` batches (GPU busy fraction, host↔device copies,
   synchronising ``.cpu()`` copies, loader wait (decoding), committer time); both backbones, then resnet18 alone;
4. writes the JSON (``--out``) and a markdown summary beside it (``.md``).

``--budget-s`` bounds the whole run: an end-to-end pass that would overrun stops after the batch in flight (its
computed batches are dropped with its work folder) and the report says how far it got.

    python benchmarks/gpu_extract.py --n 50000 --out $OUT/gpu.json              # on a lent GPU (~8 min)
    python benchmarks/gpu_extract.py --n 64 --input-size 64 --batch-size 8 --profile-batches 3 --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# benchmarks/common.py: the script folder is on sys.path
from common import DEFAULT_DATA, REPO, flops_per_image, run_header, run_trunks

import fusionfeat.engines.extract as engine
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import Manifest, Sample, build_manifest
from fusionfeat.encoders import RANDOM, load_backbone
from fusionfeat.runtime import resolve_device, resolve_precision
from fusionfeat.store import PartialStore, partial_dir
from fusionfeat.store.chunks import ChunkEncoder

FARM = REPO / ".devdata" / "gpu-farm"


class BudgetReached(Exception):
    """Raised from inside the engine's batch loop when the time budget is spent."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ALL-IDB2 folder to replicate")
    parser.add_argument("--n", type=int, default=50_000, help="images in the replicated manifest")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=engine.ExtractConfig.batch_size,
                        help="batch for e2e and compute-only [default: the engine's]")
    parser.add_argument("--workers", type=int, default=None, help="loader workers [default: the engine's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-tokens", action="store_true", help="pooled vectors only")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="the engine's --compile for the e2e passes (auto: eager on a GPU; the compile counts as "
                             "start-up)")
    parser.add_argument("--e2e", default="resnet18,vgg16;resnet18",
                        help="';'-separated backbone lists, one e2e pass each (the first is profiled)")
    parser.add_argument("--warmup-batches", type=int, default=10, help="batches counted as start-up")
    parser.add_argument("--profile-batches", type=int, default=300, help="profiled batches after warm-up (0: none)")
    parser.add_argument("--compute-batches", type=int, default=30, help="timed batches per compute-only config")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop measuring after this many seconds")
    parser.add_argument("--trace", type=Path, default=None, help="also export the profiler's chrome trace here")
    parser.add_argument("--farm", type=Path, default=FARM, help="where the symlink farm goes (ignored folder)")
    parser.add_argument("--out", type=Path, default=REPO / ".devdata" / "gpu_extract.json")
    args = parser.parse_args(argv)
    if min(args.n, args.batch_size, args.compute_batches, args.input_size) < 1 or args.budget_s <= 0:
        parser.error("--n, --batch-size, --compute-batches, --input-size and --budget-s must be positive")
    args.e2e = [[b.strip() for b in part.split(",") if b.strip()] for part in args.e2e.split(";") if part.strip()]
    return args


# ---------------------------------------------------------------------------------------------- the farm


def replicated_manifest(data: Path, n: int, farm: Path) -> Manifest:
    """``n`` samples over symlinks ``farm/cKKK/<file>`` to the dataset's images (distinct paths, same files)."""
    if not data.is_dir():
        sys.exit(f"error: image folder {data} not found; pass --data DIR (on a device machine carry .devdata/ALL_IDB2)")
    base = build_manifest(data)
    copies = math.ceil(n / len(base))
    samples = []
    for c in range(copies):
        folder = farm / f"c{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for s in base.samples:
            link = folder / Path(s.path).name
            if not link.is_symlink():
                link.symlink_to(base.absolute(s).resolve())
            samples.append(Sample(f"{folder.name}/{link.name}", s.label))
            if len(samples) == n:
                return Manifest(farm, samples, base.classes, "csv")
    return Manifest(farm, samples, base.classes, "csv")


# ---------------------------------------------------------------------------------------------- instrumentation


class Probe:
    """Times the engine from outside: each batch as ``iter_embeddings`` yields it, the forward step inside it,
    the committer's compression and batch writes (background thread), and the model set-up."""

    def __init__(self, deadline: float, warmup: int, profile_batches: int, device: torch.device, trace: Path | None):
        self.deadline, self.warmup, self.profile_batches = deadline, warmup, profile_batches
        self.device, self.trace = device, trace
        self.t_call = 0.0
        self.yields: list[tuple[float, int]] = []  # (time after the batch was yielded, images)
        self.seconds = {"load_backbone": 0.0, "forward": 0.0, "encode": 0.0, "write": 0.0, "assemble": 0.0,
                        "consumer": 0.0, "loader_next": 0.0}
        self.forward_by_batch: list[float] = []
        self.profile: dict | None = None
        self.stopped_early = False

    def _timed(self, key, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] += time.perf_counter() - start
        return wrapper

    def _embeddings(self, original):
        probe = self

        def wrapper(*a, **kw) -> Iterator:
            inner = original(*a, **kw)
            profiler = None
            while True:
                n_done = len(probe.yields)
                if n_done == probe.warmup and probe.profile_batches and probe.profile is None and profiler is None:
                    profiler = start_profiler(probe.device)
                if profiler is not None and n_done == probe.warmup + probe.profile_batches:
                    probe.profile = stop_profiler(profiler, probe, probe.trace)
                    profiler = None
                t0 = time.perf_counter()
                forward_before = probe.seconds["forward"]
                try:
                    item = next(inner)
                except StopIteration:
                    break
                now = time.perf_counter()
                probe.seconds["loader_next"] += now - t0 - (probe.seconds["forward"] - forward_before)
                probe.forward_by_batch.append(probe.seconds["forward"] - forward_before)
                probe.yields.append((now, len(item[0])))
                yield item
                probe.seconds["consumer"] += time.perf_counter() - now
                if time.perf_counter() > probe.deadline:
                    probe.stopped_early = True
                    break
            if profiler is not None:  # the pass ended inside the profiled window
                probe.profile = stop_profiler(profiler, probe, probe.trace)
            if probe.stopped_early:
                raise BudgetReached
        return wrapper

    @contextmanager
    def active(self):
        patches = [(engine, "iter_embeddings", self._embeddings(engine.iter_embeddings)),
                   (engine, "load_backbone", self._timed("load_backbone", engine.load_backbone)),
                   (engine, "assemble", self._timed("assemble", engine.assemble)),
                   (ChunkEncoder, "encode", self._timed("encode", ChunkEncoder.encode)),
                   (PartialStore, "write", self._timed("write", PartialStore.write))]
        forward = getattr(engine, "_forward", None)  # the engine's per-batch step; split unavailable if renamed
        if forward is not None:
            patches.append((engine, "_forward", self._timed("forward", forward)))
        originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        try:
            yield self
        finally:
            for obj, name, fn in originals:
                setattr(obj, name, fn)


def start_profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    prof.__enter__()
    prof.ff_start = time.perf_counter()
    prof.ff_batches = 0
    return prof


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def stop_profiler(prof, probe: Probe, trace: Path | None) -> dict:
    """Summary of the profiled window: GPU busy fraction, copies, syncs, loader wait, committer."""
    wall = time.perf_counter() - prof.ff_start
    prof.__exit__(None, None, None)
    events = prof.events()
    n_batches = len(probe.yields) - probe.warmup
    gpu_kernels, h2d, d2h = [], 0.0, 0.0
    cpu_total: dict[str, float] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            gpu_kernels.append((e.time_range.start, e.time_range.end))
            name = e.name.lower()
            if "memcpy htod" in name:
                h2d += e.time_range.elapsed_us()
            elif "memcpy dtoh" in name:
                d2h += e.time_range.elapsed_us()
        else:
            cpu_total[e.name] = cpu_total.get(e.name, 0.0) + e.time_range.elapsed_us()

    def cpu_s(*prefixes: str) -> float:
        return sum(v for k, v in cpu_total.items() if k.startswith(prefixes)) / 1e6

    summary = {
        "batches": n_batches, "wall_s": wall,
        "img_per_s": sum(n for _, n in probe.yields[probe.warmup:]) / wall if wall else None,
        "gpu_busy_fraction": _union_us(gpu_kernels) / 1e6 / wall if gpu_kernels else None,
        "gpu_h2d_s": h2d / 1e6, "gpu_d2h_s": d2h / 1e6,
        # host side: the blocking syncs (.cpu() of each backbone's outputs waits for the GPU) and copy ops
        "host_sync_s": cpu_s("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize"),
        "host_copy_ops_s": cpu_s("aten::_to_copy", "aten::copy_"),
        "loader_wait_s": cpu_s("enumerate(DataLoader)"),
        "top_host_ops": sorted(((k, round(v / 1e6, 4)) for k, v in cpu_total.items()), key=lambda kv: -kv[1])[:12],
    }
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return summary


# ---------------------------------------------------------------------------------------------- the passes


def e2e_pass(manifest: Manifest, backbones: list[str], args, device: torch.device, deadline: float,
             profile_batches: int, workdir: Path) -> dict:
    config = engine.ExtractConfig(
        backbones=backbones, weights={b: RANDOM for b in backbones}, preprocess=Preprocess(input_size=args.input_size),
        tokens=not args.no_tokens, device=args.device, precision=args.precision, batch_size=args.batch_size,
        workers=args.workers, overwrite=True, progress=False, compile=args.compile,
        dedupe=True)  # the farm repeats each image; dedupe only marks rows at assembly, every one is computed
    probe = Probe(deadline, args.warmup_batches, profile_batches, device, args.trace if profile_batches else None)
    out = workdir / f"{'-'.join(backbones)}.h5"
    with probe.active():
        probe.t_call = time.perf_counter()
        try:
            engine.extract(manifest, out, config)
        except BudgetReached:
            pass
        end = time.perf_counter()
    shutil.rmtree(partial_dir(out), ignore_errors=True)  # what a pass stopped by the budget left
    out.unlink(missing_ok=True)
    return report_pass(probe, backbones, end, len(manifest))


def report_pass(probe: Probe, backbones: list[str], end: float, n_total: int) -> dict:
    times = [t for t, _ in probe.yields]
    counts = [n for _, n in probe.yields]
    w = min(probe.warmup, len(times))
    p = min(w + (probe.profile_batches if probe.profile else 0), len(times))
    steady = None
    if len(times) - p >= 2:  # unprofiled batches after warm-up (and after the profiled window)
        steady = {"batches": len(times) - p - 1, "images": sum(counts[p + 1:]),
                  "seconds": times[-1] - times[p], "img_per_s": sum(counts[p + 1:]) / (times[-1] - times[p])}
    images = sum(counts)
    forward = probe.forward_by_batch[p + 1:] if steady else []
    return {
        "backbones": backbones, "images_done": images, "images_requested": n_total,
        "stopped_by_budget": probe.stopped_early,
        "startup_s": (times[0] - probe.t_call) if times else None,
        "warmup_s": (times[w - 1] - probe.t_call) if w else None,
        "total_s": end - probe.t_call,
        "overall_img_per_s": images / (times[-1] - probe.t_call) if times else None,
        "steady": steady,
        "steady_forward_s_per_batch": sum(forward) / len(forward) if forward else None,
        "seconds": {k: round(v, 3) for k, v in probe.seconds.items()},
        "profile": probe.profile,
    }


def compute_pass(backbones: list[str], args, device: torch.device, precision: str) -> dict:
    trunks = [load_backbone(b, RANDOM).trunk.to(device, memory_format=torch.channels_last) for b in backbones]
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    run_trunks([x] * 3, trunks, device, precision, keep_tokens=not args.no_tokens)  # warm-up (cudnn, oneDNN)
    run = run_trunks([x] * args.compute_batches, trunks, device, precision, keep_tokens=not args.no_tokens)
    flops = sum(flops_per_image(t, args.input_size, device) for t in trunks)
    rate = run["images"] / run["seconds"]
    return {"backbones": backbones, **run, "img_per_s": rate, "gflop_per_image": flops / 1e9,
            "achieved_tflop_s": rate * flops / 1e12}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU extraction: {m['gpu'] or 'CPU (dry run)'}", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}, torch {m['torch']}",
             "- load average (1 min) at start / end: {:.2f} / {:.2f}".format(
                 report["load_average_start"][0], report["load_average_end"][0]),
             f"- N {report['n']}, input {report['input_size']}, batch {report['batch_size']}, workers "
             f"{report['workers']}, precision {report['precision']}, tokens {report['tokens']}", "",
             "| what | backbones | img/s | notes |", "|---|---|---:|---|"]
    for c in report["compute"]:
        lines.append(f"| compute-only | {'+'.join(c['backbones'])} | {c['img_per_s']:.0f} | "
                     f"{c['gflop_per_image']:.1f} GFLOP/img, {c['achieved_tflop_s']:.1f} TFLOP/s |")
    for e in report["e2e"]:
        steady = e["steady"]
        rate = f"{steady['img_per_s']:.0f}" if steady else "n/a"
        compute = next((c for c in report["compute"] if c["backbones"] == e["backbones"]), None)
        frac = f", {steady['img_per_s'] / compute['img_per_s']:.2f} of compute-only" if steady and compute else ""
        lines.append(f"| e2e steady | {'+'.join(e['backbones'])} | {rate} | start-up {e['startup_s'] or 0:.1f} s, "
                     f"{e['images_done']}/{e['images_requested']} images in {e['total_s']:.1f} s"
                     f"{' (stopped by budget)' if e['stopped_by_budget'] else ''}{frac} |")
    prof = next((e["profile"] for e in report["e2e"] if e["profile"]), None)
    if prof:
        busy = "n/a (CPU run)" if prof["gpu_busy_fraction"] is None else f"{prof['gpu_busy_fraction']:.2f}"
        lines += ["", f"Profile of {prof['batches']} steady batches ({prof['wall_s']:.1f} s, "
                      f"{prof['img_per_s'] or 0:.0f} img/s under the profiler):", "",
                  f"- GPU busy fraction: {busy}",
                  f"- GPU copies: host→device {prof['gpu_h2d_s']:.2f} s, device→host {prof['gpu_d2h_s']:.2f} s",
                  f"- host waiting in syncs (`.cpu()`, memcpy): {prof['host_sync_s']:.2f} s; "
                  f"copy ops (`aten::_to_copy`/`copy_`): {prof['host_copy_ops_s']:.2f} s",
                  f"- loader wait (decoding not hidden by workers): {prof['loader_wait_s']:.2f} s",
                  "- top host ops (s, inclusive: nested ops overlap): "
                  + ", ".join(f"{k} {v}" for k, v in prof["top_host_ops"][:6])]
    first = report["e2e"][0] if report["e2e"] else None
    if first:
        s = first["seconds"]
        lines += [f"- whole first pass: forward {s['forward']:.1f} s, loader wait {s['loader_next']:.1f} s, "
                  f"consumer (incl. committer back-pressure) {s['consumer']:.1f} s; committer thread: "
                  f"encode {s['encode']:.1f} s, write {s['write']:.1f} s; model set-up {s['load_backbone']:.1f} s"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    header = run_header("benchmarks/gpu_extract.py", argv)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(device)}", flush=True)
    t = time.perf_counter()
    manifest = replicated_manifest(args.data, args.n, args.farm)
    print(f"farm: {len(manifest)} images under {args.farm} in {time.perf_counter() - t:.1f} s", flush=True)

    compute = []
    for backbones in dict.fromkeys(tuple(b) for b in args.e2e):
        c = compute_pass(list(backbones), args, device, precision)
        compute.append(c)
        print(f"compute-only {'+'.join(backbones)}: {c['img_per_s']:.0f} img/s", flush=True)

    e2e = []
    workdir = Path(tempfile.mkdtemp(prefix="ff-gpu-extract-", dir=args.farm.parent))
    try:
        for i, backbones in enumerate(args.e2e):
            left = deadline - time.perf_counter()
            if left < 5:
                print(f"budget spent before the e2e pass of {'+'.join(backbones)}", flush=True)
                break
            share = left * (0.65 if i < len(args.e2e) - 1 else 1.0)  # leave the later passes their part
            result = e2e_pass(manifest, backbones, args, device, time.perf_counter() + share,
                              args.profile_batches if i == 0 else 0, workdir)
            e2e.append(result)
            steady = result["steady"]
            print(f"e2e {'+'.join(backbones)}: start-up {result['startup_s'] or 0:.1f} s, steady "
                  f"{steady['img_per_s'] if steady else float('nan'):.0f} img/s, {result['images_done']} images "
                  f"in {result['total_s']:.1f} s{' (budget)' if result['stopped_by_budget'] else ''}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = {**header, "n": len(manifest), "input_size": args.input_size, "batch_size": args.batch_size,
              "workers": args.workers if args.workers is not None else engine.default_workers(device),
              "device": str(device), "precision": precision, "tokens": not args.no_tokens, "compile": args.compile,
              "budget_s": args.budget_s, "wall_s": time.perf_counter() - start,
              "compute": compute, "e2e": e2e, "load_average_end": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    md = markdown(report)
    args.out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
