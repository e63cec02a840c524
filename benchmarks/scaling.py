"""Scaling with N: wall time and peak RSS of extraction and of ``fusionfeat fit --head all``, exponent of time vs N.

Two series, each step a fresh subprocess whose peak RSS is read from ``ru_maxrss`` of its children:

* extraction: real ``fusionfeat extract`` (both backbones, tokens) of N synthetic images at a small
  ``--input-size`` (so the series finishes), plus the per-image cost at 224 from a short run;
* fit: ``fusionfeat fit --head all`` on synthetic stores at full C-NMC shape: subjects and class balance sampled
  from the C-NMC file manifest, resnet18 and vgg16, pooled 512 and tokens 7×7×512 float16, written with
  ``fusionfeat.store``'s helpers so ``fit`` reads a real store; ``--cv grouped`` on a ``--views 1`` store and
  ``--cv paper`` on a ``dihedral8`` store (the paper's protocol needs the views).

A line fitted to log(time) against log(N) gives the exponent (1 = linear). Writes the JSON, a markdown table and a
PNG plot (time and peak RSS against N).

    python benchmarks/scaling.py                                  # N = 1k, 4k, 16k (long: for a quiet machine)
    python benchmarks/scaling.py --quick --plot /tmp/scaling.png  # N = 200, 400: a dry run of every step
    python benchmarks/scaling.py --merge a.json b.json --out all.json  # one table and plot from runs side by side
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# benchmarks/common.py: the script folder is on sys.path
from common import REPO, measured, run_header

from fusionfeat.data.images import Preprocess
from fusionfeat.data.synthetic import generate_class_folders
from fusionfeat.encoders import RANDOM, load_backbone
from fusionfeat.engines.extract import software_versions
from fusionfeat.store import STR_DTYPE, create_feature_datasets, create_store_file, finish_store, now_iso
from fusionfeat.store.chunks import encode_chunk, write_chunks

CNMC_MANIFEST = REPO.parent / "shared" / "data" / "C-NMC_2019_manifest" / "cnmc_file_manifest.csv"
BACKBONES = ("resnet18", "vgg16")
FULL_SIZE = 224
POOL = 64  # distinct synthetic token maps per class and backbone (rows draw from them: timing, not accuracy)
NOISE = 0.12  # share of images whose features are drawn from the other class (about C-NMC's error rate)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="N, a comma list (a geometric series)")
    parser.add_argument("--quick", action="store_true", help="dry run: N = 200, 400 and short runs")
    parser.add_argument("--manifest", type=Path, default=CNMC_MANIFEST, help="C-NMC file manifest CSV")
    parser.add_argument("--steps", default="extract,grouped,paper", help="comma list of extract, grouped, paper")
    parser.add_argument("--heads", default="all")
    parser.add_argument("--extract-input-size", type=int, default=32, help="input size of the extraction series")
    parser.add_argument("--image-size", type=int, default=64, help="side of the synthetic images")
    parser.add_argument("--per-image-n", type=int, default=32, help="images for the per-image cost at 224")
    parser.add_argument("--step-timeout-s", type=float, default=3600.0, help="stop a step that runs longer")
    parser.add_argument("--work", type=Path, default=REPO / ".devdata" / "scaling", help="work folder (ignored)")
    parser.add_argument("--keep", action="store_true", help="keep the generated stores and images")
    parser.add_argument("--out", type=Path, default=REPO / ".devdata" / "scaling.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "scaling.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.per_image_n = "200,400", min(args.per_image_n, 4)
    try:
        args.sizes = sorted({int(n) for n in args.sizes.split(",") if n.strip()})
    except ValueError:
        parser.error("--sizes takes a comma list of integers")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 20 or set(args.steps) - {"extract", "grouped", "paper"}:
        parser.error("--sizes must be at least 20; --steps among extract, grouped, paper")
    return args


# ---------------------------------------------------------------------------------------------- measuring


def exponent(ns: list[int], seconds: list[float]) -> float | None:
    """Slope of log(time) against log(N) (least squares); None with fewer than two points."""
    pts = [(n, s) for n, s in zip(ns, seconds, strict=True) if s]
    if len(pts) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


# ---------------------------------------------------------------------------------------------- the C-NMC-shaped store


def cnmc_rows(manifest: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (1 = ALL), subjects and folds of ``n`` training images drawn from the C-NMC manifest: a random subset
    (class balance and subjects as in the data); past its size, repeats under renamed subjects (``<id>~k``)."""
    if not manifest.is_file():
        sys.exit(f"error: {manifest} not found; pass --manifest (the C-NMC file manifest CSV)")
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "training_data" and r["label"] in ("all", "hem")]
    rng = np.random.default_rng(seed)
    picked = []
    for k in range(math.ceil(n / len(rows))):
        order = rng.permutation(len(rows))[: n - len(picked)]
        picked += [(rows[i], k) for i in order]
    labels = np.array([int(r["label"] == "all") for r, _ in picked], dtype=np.int64)
    groups = np.array([r["subject_id"] + (f"~{k}" if k else "") for r, k in picked])
    folds = np.array([int(r["fold"].rsplit("_", 1)[-1]) if r["fold"] else -1 for r, _ in picked], dtype=np.int64)
    return labels, groups, folds


def write_store(path: Path, labels: np.ndarray, groups: np.ndarray, folds: np.ndarray, views: str, seed: int) -> None:
    """A finished store with synthetic features at full C-NMC shape, through fusionfeat.store's writers."""
    n = len(labels)
    preprocess = Preprocess(input_size=FULL_SIZE, views=views)
    n_views = preprocess.n_views
    models = [load_backbone(name, RANDOM, seed) for name in BACKBONES]
    samples = {"path": np.array([f"synthetic/{i:06d}.bmp" for i in range(n)]), "label": labels,
               "group": groups, "fold": folds}
    root_attrs = {"created": now_iso(), "complete": False, "data_root": "synthetic (benchmarks/scaling.py)",
                  "layout": "cnmc", "versions": json.dumps(software_versions()),
                  "settings": json.dumps({"synthetic": True, "views": views}), "device": "cpu (synthetic)",
                  "command": " ".join(sys.argv)}
    tmp = path.with_name(f".{path.name}.tmp")
    h5 = create_store_file(tmp, samples, ["hem", "all"], root_attrs)
    h5["samples"].create_dataset("sha256", data=np.array([f"{i:064x}" for i in range(n)], dtype=object),
                                 dtype=STR_DTYPE)
    h5["samples"].create_dataset("ok", data=np.ones(n, dtype=bool))
    h5["samples"].create_dataset("error", data=np.array([""] * n, dtype=object), dtype=STR_DTYPE)
    rng = np.random.default_rng(seed)
    features = h5.create_group("features")
    for m in models:
        dim, n_tok = m.spec.dim, m.spec.n_tokens(FULL_SIZE)
        attrs = {**m.provenance(), **preprocess.as_attrs(), "precision": "fp32", "device": "cpu (synthetic)",
                 "token_grid": m.spec.token_grid(FULL_SIZE), "pooling": "global average of the last conv stage"}
        group = create_feature_datasets(features, m.spec.name, n, n_views, dim, n_tok, attrs)
        # ReLU-like maps with a class shift on a few channels: compressible like real maps, and learnable
        shift = np.zeros(dim, np.float32)
        shift[rng.choice(dim, dim // 8, replace=False)] = 0.5
        pool = np.maximum(rng.standard_normal((2, POOL, n_tok, dim), dtype=np.float32) + shift * np.arange(2)[:, None,
                          None, None], 0).astype(np.float16)
        blobs = [[encode_chunk(pool[c, k]) for k in range(POOL)] for c in range(2)]
        pooled_pool = pool.astype(np.float32).mean(axis=2)
        # NOISE of the images look like the other class: the heads cannot fit every row, so early stopping
        # stops them as on real data instead of every epoch still shaving the loss of a separable set
        looks = np.where(rng.random(n) < NOISE, 1 - labels, labels)
        for lo in range(0, n, 1024):
            hi = min(n, lo + 1024)
            pick = rng.integers(0, POOL, size=(hi - lo, n_views))
            group["pooled"][lo:hi] = pooled_pool[looks[lo:hi, None], pick]
            parts = [blobs[looks[lo + i]][pick[i, v]] for i in range(hi - lo) for v in range(n_views)]
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
            write_chunks(group["tokens"], lo, np.frombuffer(b"".join(parts), dtype=np.uint8), offsets)
    h5.attrs["n_skipped"] = 0
    finish_store(h5, tmp, path)


# ---------------------------------------------------------------------------------------------- the series


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusionfeat", *args]


def extract_step(work: Path, n: int, args, input_size: int, image_size: int) -> dict:
    data = work / f"img{n}-{image_size}"
    if not data.is_dir():
        generate_class_folders(data, n_per_class=n // 2, size=image_size, seed=args.seed)
    store = work / f"x{n}-{input_size}.h5"
    store.unlink(missing_ok=True)
    run = measured(cli("extract", str(data), "-o", str(store), "--weights", "random", "--input-size", str(input_size),
                       "--quiet"), args.step_timeout_s)
    store.unlink(missing_ok=True)
    return {"step": "extract", "n": 2 * (n // 2), "input_size": input_size, **run}


def fit_step(work: Path, n: int, args, protocol: str) -> dict:
    views = "dihedral8" if protocol == "paper" else "1"
    store = work / f"cnmc{n}-{views}.h5"
    start = time.perf_counter()
    if not store.exists():
        write_store(store, *cnmc_rows(args.manifest, n, args.seed), views, args.seed)
    made = time.perf_counter() - start
    run_dir = work / f"run{n}-{protocol}"
    shutil.rmtree(run_dir, ignore_errors=True)
    probe_json = work / f"probe{n}-{protocol}.json"
    probe_json.unlink(missing_ok=True)
    probe = [sys.executable, str(Path(__file__).with_name("fit_probe.py")), str(probe_json)]
    run = measured([*probe, "fit", str(store), "--head", args.heads, "--cv", protocol, "-o", str(run_dir), "--quiet"],
                   args.step_timeout_s)
    per_head, per_head_rss = {}, {}
    if probe_json.is_file():  # the probe resets the high-water mark per head: its own run peak is the true one
        probed = json.loads(probe_json.read_text())
        per_head = {h: round(v["seconds"], 1) for h, v in probed["heads"].items()}
        per_head_rss = {h: v["peak_rss_mib"] and round(v["peak_rss_mib"]) for h, v in probed["heads"].items()}
        run["peak_rss_mib"] = probed["run"]["peak_rss_mib"] or run["peak_rss_mib"]
    rows, feature_bytes = feature_bytes_read(store, protocol)
    return {"step": f"fit {protocol}", "n": n, "views": views, "rows": rows, "store_mib": store.stat().st_size / 2**20,
            "store_write_s": made, "per_head_s": per_head, "per_head_peak_rss_mib": per_head_rss,
            "head_feature_mib": feature_bytes / 2**20, **run}


def feature_bytes_read(store: Path, protocol: str) -> tuple[int, int]:
    """Rows the heads read and the bytes of the largest matrix a head holds: both backbones' tokens as float16,
    one row per image (grouped) or per balanced row (paper: the minority class topped up with rotated copies)."""
    from fusionfeat.store import FeatureStore

    with FeatureStore.open(store) as fs:
        n = int(fs.ok.sum())
        rows = n if protocol != "paper" else 2 * int(max(np.bincount(fs.labels[fs.ok], minlength=2)))  # balanced
        per_row = sum(int(np.prod(fs.block_shape(b, "tokens"))) for b in fs.backbones) * 2
    return rows, rows * per_row


def table(results: list[dict], exponents: dict) -> str:
    lines = ["| step | N images | rows | wall (s) | peak RSS (MiB) | heads' token bytes (MiB) | exit |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rss = f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] is not None else "n/a"
        feat = f"{r['head_feature_mib']:.0f}" if "head_feature_mib" in r else ""
        lines.append(f"| {r['step']} | {r['n']} | {r.get('rows', '')} | {r['seconds']:.1f} | {rss} | {feat} | "
                     f"{r['rc']} |")
    lines += ["", "Exponent of time vs N (log-log least squares): "
              + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in exponents.items())]
    fits = [r for r in results if r.get("per_head_s")]
    if fits:
        heads = list(dict.fromkeys(h for r in fits for h in r["per_head_s"]))
        lines += ["", "Per head, wall seconds (its X read included) / peak RSS MiB (high-water mark reset before "
                  "each head):", "", "| step | N | " + " | ".join(heads) + " |",
                  "|---|---:" + "|---:" * len(heads) + "|"]
        for r in fits:
            cells = [f"{r['per_head_s'].get(h, float('nan')):.0f} / {r['per_head_peak_rss_mib'].get(h) or 'n/a'}"
                     for h in heads]
            lines.append(f"| {r['step']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for step in dict.fromkeys(r["step"] for r in results if "per-image" not in r["step"]):
        rs = sorted((r for r in results if r["step"] == step and r["rc"] == 0), key=lambda r: r["n"])
        if not rs:
            continue
        ax_t.plot([r["n"] for r in rs], [r["seconds"] for r in rs], "o-", label=step)
        ax_m.plot([r["n"] for r in rs], [r["peak_rss_mib"] for r in rs], "o-", label=step)
    ax_t.set_yscale("log")
    ax_m.set_ylim(bottom=0)  # flat is the claim to check: a linear axis from 0 shows it honestly
    for ax, label in ((ax_t, "wall time (s)"), (ax_m, "peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("N (images)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[Path], out: Path, plot_path: Path) -> None:
    """One table, exponent set and plot from several runs' JSON (series run side by side, one per core)."""
    reports = [json.loads(p.read_text()) for p in paths]
    results = [r for rep in reports for r in rep["results"]]
    series = [s for s in dict.fromkeys(r["step"] for r in results) if "per-image" not in s]
    exponents = {s: exponent([r["n"] for r in results if r["step"] == s and r["rc"] == 0],
                             [r["seconds"] for r in results if r["step"] == s and r["rc"] == 0]) for s in series}
    md = table(results, exponents)
    out.write_text(json.dumps({"merged": [str(p) for p in paths], "commands": [r["command"] for r in reports],
                               "results": results, "exponents": exponents}, indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    dates = sorted(r["date"] for r in reports)
    loads = [x for r in reports for x in (r["load_average_start"][0], r["load_average_end"][0])]
    machine = reports[0]["machine"]
    plot(results, plot_path, f"benchmarks/scaling.py, {len(reports)} runs merged, from {dates[0][:16]} UTC; "
         f"{machine['cpu']}, {machine['cores']} cores; load {min(loads):.1f}-{max(loads):.1f}")
    print(md)
    print(f"wrote {out}, {out.with_suffix('.md')} and {plot_path}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--merge":  # python benchmarks/scaling.py --merge a.json b.json --out c.json --plot p.png
        parser = argparse.ArgumentParser()
        parser.add_argument("--merge", nargs="+", type=Path, required=True)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--plot", type=Path, default=REPO / "docs" / "scaling.png")
        margs = parser.parse_args(argv)
        merge(margs.merge, margs.out, margs.plot)
        return {}
    args = parse_args(argv)
    header = run_header("benchmarks/scaling.py", argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        if "extract" in args.steps:
            per_image = extract_step(work, args.per_image_n, args, FULL_SIZE, FULL_SIZE)
            per_image["step"] = "extract 224 (per-image cost)"
            results.append(per_image)
            print(f"extract at 224: {per_image['n']} images in {per_image['seconds']:.1f} s "
                  f"({per_image['seconds'] / per_image['n']:.3f} s/image, start-up included), rc {per_image['rc']}",
                  flush=True)
        for n in args.sizes:
            steps = [s for s in args.steps if s != "extract"]
            if "extract" in args.steps:
                results.append(extract_step(work, n, args, args.extract_input_size, args.image_size))
            for protocol in steps:
                results.append(fit_step(work, n, args, protocol))
            for r in results[-(len(steps) + ("extract" in args.steps)):]:
                rss = f"{r['peak_rss_mib']:.0f} MiB" if r["peak_rss_mib"] is not None else "n/a"
                print(f"N {r['n']:>6} {r['step']:<12} {r['seconds']:8.1f} s  peak RSS {rss}  rc {r['rc']}"
                      + (f"  per head {r['per_head_s']}" if r.get("per_head_s") else ""), flush=True)
                if r["rc"] != 0:
                    print(r["tail"][-800:], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    series = [s for s in dict.fromkeys(r["step"] for r in results) if "per-image" not in s]
    exponents = {s: exponent([r["n"] for r in results if r["step"] == s and r["rc"] == 0],
                             [r["seconds"] for r in results if r["step"] == s and r["rc"] == 0]) for s in series}
    md = table(results, exponents)
    load_end = list(os.getloadavg())
    report = {**header, "sizes": args.sizes, "heads": args.heads, "extract_input_size": args.extract_input_size,
              "results": results, "exponents": exponents, "load_average_end": load_end,
              "self_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(md + "\n")
    plot(results, args.plot, f"{header['command']}\n{header['date']}, {header['machine']['cores']} cores, "
         f"load {header['load_average_start'][0]:.1f}")
    print()
    print(md)
    print(f"load average (1 min) start / end: {header['load_average_start'][0]:.2f} / {load_end[0]:.2f}")
    print(f"wrote {args.out}, {args.out.with_suffix('.md')} and {args.plot}")
    return report


if __name__ == "__main__":
    main()
