"""Cross-validation on cached features, against the paper's end-to-end alternative, measured in one run.

1. **Extraction (measured).** ``fusionfeat.engines.extract.extract`` runs resnet18 + vgg16 (random weights, seeded,
   224 px, tokens on) over ``--n-real`` evenly spaced ALL-IDB2 images into a temporary store. Timed end to end
   (seconds per image), and each trunk's forward pass is timed on its own by forward hooks.
2. **A 2,600-image store (resampled).** Rows of real features are drawn with replacement (classes balanced),
   token maps get multiplicative Gaussian noise (``--noise``), pooled vectors are the noisy maps' means, and the
   store is written with fusionfeat's own writer helpers, so ``FeatureStore.open`` reads it like any store.
   CV timing depends on N and the feature shapes, not on the values; accuracies on it mean nothing.
3. **CV (measured).** ``cross_validate(store, [head], protocol="stratified", folds=5, seed=0, device="cpu")``
   once per head, wall clock around each call, plus the per-fold fit/predict times and the epochs the torch
   heads trained.
4. **The paper's alternative (derived from the measurements above).** The heads are trained with the frozen
   backbones re-run on every image every epoch (forward only). Per torch head::

       paper_h = folds * (E_h * N_train + N_test) * sum(t_fwd[b] for b in head's backbones) + cv_h

   with ``E_h`` the mean epochs the head actually trained per fold, ``N_train = N * (folds - 1) / folds`` (each
   epoch passes the inner training and validation images), ``N_test = N / folds``, ``t_fwd[b]`` the measured
   forward seconds per image of backbone ``b``, and ``cv_h`` the measured CV time of the head (the same head
   compute). A classical baseline (svm, xgboost, logreg) needs one pass of both backbones over the N images:
   ``N * (t_fwd[resnet18] + t_fwd[vgg16]) + cv_h``. fusionfeat: ``N * t_e2e + sum(cv_h)``, with ``t_e2e`` the
   measured end-to-end extraction seconds per image (decode + both trunks + store; model set-up amortised over
   ``--n-real`` images, which overstates it).

    python benchmarks/fit_cv.py                                  # 48 real images -> 2,600 rows, all seven heads
    python benchmarks/fit_cv.py --threads 1                      # on a shared 2-core machine (docs/benchmarks.md)
    python benchmarks/fit_cv.py --n 520 --heads logreg,concat    # quick check
    python benchmarks/fit_cv.py --store features224.h5 --n-real 16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (  # benchmarks/common.py: the script folder is on sys.path
    benchmark_parser,
    machine_info,
    subset_manifest,
    utc_now,
    write_report,
)

import fusionfeat.engines.extract as engine
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import Manifest
from fusionfeat.encoders import RANDOM
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HEAD_NAMES, expand_head_names
from fusionfeat.runtime import resolve_device, resolve_precision
from fusionfeat.store import FeatureStore, create_feature_datasets, create_store_file, finish_store, now_iso

BACKBONES = ("resnet18", "vgg16")
INPUT_SIZE = 224
WRITE_ROWS = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__, "image folder for the timed extraction (default: <repo>/../shared/data/ALL_IDB2)")
    parser.add_argument("--n-real", type=int, default=48, help="real images extracted and timed (evenly spaced)")
    parser.add_argument("--store", type=Path, default=None,
                        help="resample this existing 224-px store (both backbones, tokens) instead of the "
                             "timed extraction's; the extraction still runs, for the per-image times")
    parser.add_argument("--n", type=int, default=2600, help="rows of the resampled store (classes balanced)")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the multiplicative noise on token maps")
    parser.add_argument("--heads", default="all", help="comma list of heads, or 'all' (the seven of HEAD_NAMES)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.n_real < 2 or args.n < 4 * args.folds or args.folds < 2 or args.noise < 0:
        parser.error("need --n-real >= 2, --folds >= 2, --n >= 4 * --folds and --noise >= 0")
    args.head_names = expand_head_names(args.heads)
    return args


# ---------------------------------------------------------------------------------------------- extraction


class _ForwardTimer:
    """Seconds spent in each backbone's trunk, via forward hooks on the models the engine loads.

    Instrumentation only: ``engine.load_backbone`` is wrapped to add the hooks; the trunks run unchanged.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def active(self):
        original = engine.load_backbone

        def load(name, *args, **kwargs):
            loaded = original(name, *args, **kwargs)
            started: list[float] = []
            loaded.trunk.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

            def done(*_):
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started.pop()

            loaded.trunk.register_forward_hook(done)
            return loaded

        engine.load_backbone = load
        try:
            yield self
        finally:
            engine.load_backbone = original


def timed_extraction(manifest: Manifest, out: Path, seed: int) -> dict:
    """Extract ``manifest`` into ``out`` (after an untimed 2-image warm-up) and time it."""
    def config() -> engine.ExtractConfig:
        return engine.ExtractConfig(
            backbones=list(BACKBONES), weights={b: RANDOM for b in BACKBONES}, seed=seed,
            preprocess=Preprocess(input_size=INPUT_SIZE), tokens=True, device="cpu", precision="auto",
            overwrite=True, progress=False, dedupe=True,  # ALL-IDB2 holds one duplicate image
        )

    warm = Manifest(manifest.root, manifest.samples[:2], manifest.classes, manifest.layout)
    engine.extract(warm, out.with_name("warm-up.h5"), config())  # oneDNN kernel choice, imports, page cache
    load = os.getloadavg()[0]
    with _ForwardTimer().active() as timer:
        start = time.perf_counter()
        result = engine.extract(manifest, out, config())
        seconds = time.perf_counter() - start
    if result.n_computed != len(manifest) or result.n_skipped:
        raise RuntimeError(f"extracted {result.n_computed} of {len(manifest)} images, skipped {result.n_skipped}")
    n = len(manifest)
    return {
        "images": n,
        "seconds": seconds,
        "e2e_s_per_image": seconds / n,
        "forward_s_per_image": {b: timer.seconds[b] / n for b in BACKBONES},
        "precision": resolve_precision("auto", resolve_device("cpu")),
        "load_avg_1min_before": load,
        "load_avg_1min_after": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------- resampling


def _jsonable(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def resample_store(source: FeatureStore, out: Path, n: int, noise: float, seed: int) -> dict:
    """A store of ``n`` rows drawn from ``source``'s usable rows (classes balanced), token maps × (1 + noise·ε).

    Written with ``create_store_file`` / ``create_feature_datasets`` / ``finish_store``; pooled = mean of the
    noisy token map, as the engine pools.
    """
    for b in BACKBONES:
        if b not in source.backbones or not source.has_tokens(b) or source.attrs(b).get("input_size") != INPUT_SIZE:
            sys.exit(f"error: {source.path} needs {b} features with tokens at {INPUT_SIZE} px")
    if source.n_views != 1:
        sys.exit(f"error: {source.path} holds {source.n_views} views; resample a single-view store")
    rng = np.random.default_rng([seed, 2600])
    ok = np.flatnonzero(source.ok)
    labels = source.labels
    per_class = [n // 2, n - n // 2]
    picks = []
    for c, count in enumerate(per_class):
        pool = ok[labels[ok] == c]
        if not len(pool):
            sys.exit(f"error: {source.path} has no usable image of class {source.classes[c]!r}")
        picks.append(rng.choice(pool, size=count, replace=True))
    src = rng.permutation(np.concatenate(picks))
    samples = {
        "path": np.array([f"resampled/{i:05d}/{p}" for i, p in enumerate(source.paths[src])], dtype=str),
        "label": labels[src].astype(np.int64),
        "group": np.full(n, "", dtype=str),
        "fold": np.full(n, -1, dtype=np.int64),
        "sha256": source.sha256[src].astype(str),
        "ok": np.ones(n, dtype=bool),
        "error": np.full(n, "", dtype=str),
    }
    note = (f"benchmark store: {n} rows resampled with replacement from {len(ok)} real rows of {source.path}, "
            f"token maps x (1 + {noise} * N(0, 1)); for timing only, accuracies mean nothing")
    root = {k: _jsonable(v) for k, v in source.root_attrs().items() if k not in ("complete", "completed")}
    root.update(created=now_iso(), complete=False, resampled=note, command=" ".join(sys.argv))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    h5 = create_store_file(tmp, samples, list(source.classes), root)
    try:
        features = h5.create_group("features")
        for b in BACKBONES:
            n_tokens, dim = source.block_shape(b, "tokens")
            group = create_feature_datasets(features, b, n, 1, dim, n_tokens,
                                            {**source.attrs(b), "resampled": note})
            real = source.tokens(b, index=ok).astype(np.float32)  # (n_ok, T, C)
            where = np.searchsorted(ok, src)
            for lo in range(0, n, WRITE_ROWS):
                rows = real[where[lo:lo + WRITE_ROWS]]
                rows = rows * (1.0 + noise * rng.standard_normal(rows.shape, dtype=np.float32))
                tokens = rows.astype(np.float16)
                group["tokens"][lo:lo + len(rows), 0] = tokens
                group["pooled"][lo:lo + len(rows), 0] = tokens.astype(np.float32).mean(axis=1)
    except BaseException:
        h5.close()
        tmp.unlink(missing_ok=True)
        raise
    finish_store(h5, tmp, out)
    return {"rows": n, "real_rows": int(len(ok)), "noise": noise, "class_counts": per_class, "note": note}


# ---------------------------------------------------------------------------------------------- CV


def best_epoch(history: list[dict]) -> int:
    """The epoch whose weights the estimator kept: the last that lowered the validation loss by more than
    1e-4 (``TorchHeadClassifier``'s rule), or the last epoch when there was no validation split."""
    best, at = float("inf"), len(history)
    for row in history:
        if row["val_loss"] is None:
            return len(history)
        if row["val_loss"] < best - 1e-4:
            best, at = row["val_loss"], int(row["epoch"])
    return at


def time_head(store: FeatureStore, head: str, folds: int, seed: int) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = cross_validate(store, [head], protocol="stratified", folds=folds, seed=seed, device="cpu",
                            progress=False)
    wall = time.perf_counter() - start
    name = result.heads[0]
    fr = result.fold_results(name)
    info = result.head_info[name]
    out = {
        "head": head,
        "resolved": name,
        "backbones": info["backbones"],
        "inputs": info["inputs"],
        "is_torch": info["is_torch"],
        "wall_s": wall,
        "fits": len(fr),
        "fit_s": [f.metrics["fit_time"] for f in fr],
        "predict_s": [f.metrics["predict_time"] for f in fr],
        "n_train": [f.n_train for f in fr],
        "n_test": [f.n_test for f in fr],
        "accuracy": float(np.mean([f.metrics.get("accuracy", np.nan) for f in fr])),
        "load_avg_1min_before": load,
        "load_avg_1min_after": os.getloadavg()[0],
    }
    if info["is_torch"]:
        out["epochs"] = [len(f.history or []) for f in fr]
        out["best_epochs"] = [best_epoch(f.history or []) for f in fr]
    return out


# ---------------------------------------------------------------------------------------------- costs


def paper_costs(heads: list[dict], extraction: dict, n: int, folds: int, min_epochs: int) -> dict:
    """Paper-style seconds per head (formula in the module docstring), with the epochs measured and at the
    fewest epochs early stopping allows; fusionfeat's cost; the ratios."""
    t_fwd = extraction["forward_s_per_image"]
    n_train, n_test = n * (folds - 1) / folds, n / folds
    rows, total, total_min = [], 0.0, 0.0
    for h in heads:
        per_pass = sum(t_fwd[b] for b in (h["backbones"] if h["is_torch"] else BACKBONES))
        if h["is_torch"]:
            epochs = float(np.mean(h["epochs"]))
            passes = folds * (epochs * n_train + n_test)
            passes_min = folds * (min_epochs * n_train + n_test)
        else:
            epochs, passes = None, float(n)
            passes_min = passes
        seconds = passes * per_pass + h["wall_s"]
        seconds_min = passes_min * per_pass + h["wall_s"]
        total += seconds
        total_min += seconds_min
        rows.append({"head": h["resolved"], "epochs": epochs, "image_passes": passes, "s_per_pass": per_pass,
                     "paper_s": seconds, "paper_s_min_epochs": seconds_min})
    cv_total = sum(h["wall_s"] for h in heads)
    extract_n = n * extraction["e2e_s_per_image"]
    ours = extract_n + cv_total
    return {"per_head": rows, "paper_s": total, "paper_s_min_epochs": total_min, "min_epochs": min_epochs,
            "cv_s": cv_total, "extract_n_s": extract_n, "fusionfeat_s": ours,
            "ratio": total / ours, "ratio_min_epochs": total_min / ours}


# ---------------------------------------------------------------------------------------------- reporting


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def print_report(report: dict) -> None:
    m, ex, costs = report["machine"], report["extraction"], report["costs"]
    print()
    print(f"machine: {m['cpu']}, nproc {m['cores']}, torch {m['torch']} ({m['torch_threads']} threads, "
          f"{report['threads_source']}), load average (1 min) {report['load_avg'][0]:.2f} at start, "
          f"{report['load_avg'][1]:.2f} at end")
    print(f"command: {report['command']}")
    fwd = ex["forward_s_per_image"]
    print(f"extraction (measured): {ex['images']} real images at {INPUT_SIZE} px, {ex['precision']}, "
          f"{ex['seconds']:.1f} s = {ex['e2e_s_per_image']:.3f} s/image end to end; trunk forward "
          + ", ".join(f"{b} {fwd[b]:.3f}" for b in BACKBONES) + f" s/image (sum {sum(fwd.values()):.3f})")
    rs = report["resampled"]
    print(f"store: {rs['rows']} rows resampled from {rs['real_rows']} real rows (noise {rs['noise']}), "
          f"written in {rs['seconds']:.1f} s")
    print()
    print("| head | input | fits | fit s/fold (mean) | predict s/fold (mean) | epochs/fold: trained (best) "
          "| CV wall s (measured) | load at start | paper-style image passes | paper-style s (derived) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_head = {c["head"]: c for c in costs["per_head"]}
    for h in report["heads"]:
        c = by_head[h["resolved"]]
        epochs = (f"{np.mean(h['epochs']):.1f} ({np.mean(h['best_epochs']):.1f})" if h["is_torch"] else "–")
        print(f"| {h['resolved']} | {'+'.join(h['backbones'])} {h['inputs']} | {h['fits']} "
              f"| {np.mean(h['fit_s']):.2f} | {np.mean(h['predict_s']):.3f} | {epochs} | {h['wall_s']:.1f} "
              f"| {h['load_avg_1min_before']:.1f} | {c['image_passes']:,.0f} | {c['paper_s']:,.0f} |")
    print(f"| **total** | | | | | | **{costs['cv_s']:.1f}** | | | **{costs['paper_s']:,.0f}** |")
    print()
    n = report["n"]
    print(f"fusionfeat: extraction of {n} images {costs['extract_n_s']:,.0f} s (derived: {n} x "
          f"{ex['e2e_s_per_image']:.3f} s) + CV {costs['cv_s']:.1f} s (measured) = {costs['fusionfeat_s']:,.0f} s "
          f"({_hms(costs['fusionfeat_s'])})")
    print(f"paper-style: {costs['paper_s']:,.0f} s ({_hms(costs['paper_s'])}); at the fewest epochs early "
          f"stopping allows ({costs['min_epochs']}): {costs['paper_s_min_epochs']:,.0f} s")
    print(f"ratio paper-style / fusionfeat: {costs['ratio']:.1f}x (epochs as trained), "
          f"{costs['ratio_min_epochs']:.1f}x (at {costs['min_epochs']} epochs)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run still removes its temporary stores
    threads_source = "torch default"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threads_source = "--threads"
    machine = machine_info()
    command = " ".join(["python", "benchmarks/fit_cv.py", *map(shlex.quote, sys.argv[1:])])
    load_start = os.getloadavg()[0]
    print(f"command: {command}", flush=True)
    manifest = subset_manifest(args.data, args.n_real, "--n-real")
    with tempfile.TemporaryDirectory(prefix="ff-fitcv-") as tmp:
        workdir = Path(tmp)
        real = workdir / "real.h5"
        print(f"extracting {len(manifest)} real images (timed) ...", flush=True)
        extraction = timed_extraction(manifest, real, args.seed)
        print(f"  {extraction['seconds']:.1f} s, {extraction['e2e_s_per_image']:.3f} s/image", flush=True)
        start = time.perf_counter()
        bench = workdir / "resampled.h5"
        with FeatureStore.open(args.store or real) as source:
            resampled = resample_store(source, bench, args.n, args.noise, args.seed)
        resampled["seconds"] = time.perf_counter() - start
        resampled["source"] = str(args.store or f"timed extraction of {len(manifest)} images")
        heads = []
        with FeatureStore.open(bench) as store:
            for head in args.head_names:
                h = time_head(store, head, args.folds, args.seed)
                heads.append(h)
                print(f"  {h['resolved']:18s} {h['wall_s']:7.1f} s"
                      + (f", epochs {h['epochs']}" if h["is_torch"] else "")
                      + f" (load {h['load_avg_1min_before']:.2f})", flush=True)
    min_epochs = int(TorchHeadClassifier().patience) + 1
    costs = paper_costs(heads, extraction, args.n, args.folds, min_epochs)
    report = {
        "command": command,
        "date": utc_now(),
        "machine": machine, "threads_source": threads_source,
        "load_avg": [load_start, os.getloadavg()[0]],
        "n": args.n, "folds": args.folds, "protocol": "stratified", "seed": args.seed,
        "all_heads": list(HEAD_NAMES), "extraction": extraction, "resampled": resampled,
        "heads": heads, "costs": costs,
    }
    print_report(report)
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
