"""Extraction throughput per encoder: the CNNs beside the timm ViTs (DINOv2, DinoBloom), in one run.

For each backbone, interleaved repeat by repeat (the order rotates each repeat, so machine noise hits them alike):

* ``compute``: its trunk (``load_backbone``, random seeded weights) on pre-decoded, pre-normalised channels_last
  batches through ``fusionfeat.encoders.embed`` (pooled vector and fp16 token map, as the engine keeps them),
  ``inference_mode``, at the machine's precision (``--precision auto``);
* ``e2e``: the whole ``fusionfeat.engines.extract.extract(...)`` of that backbone alone into a temporary store
  (model set-up, decoding, batches, HDF5 assembly).

Weights are random: throughput does not depend on weight values, and nothing is downloaded (dinobloom_s and
dinov2_vits14 are the same ViT-S/14 architecture; they differ only in where weights come from).

    python benchmarks/encoder_throughput.py --n 32 --repeats 3
    python benchmarks/encoder_throughput.py --backbones resnet18,dinobloom_s --input-size 224 --n 16 --repeats 1
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

# benchmarks/common.py: the script folder is on sys.path
from common import benchmark_parser, flops_per_image, run_header, subset_manifest, write_report

import fusionfeat.engines.extract as engine
from fusionfeat.data.images import Preprocess, normalize_batch
from fusionfeat.encoders import RANDOM, embed, input_stats, load_backbone, probe
from fusionfeat.errors import RandomWeightsWarning
from fusionfeat.runtime import autocast, resolve_precision


def parse_args(argv: list[str] | None = None):
    parser = benchmark_parser(__doc__, "image folder (default: <repo>/../shared/data/ALL_IDB2)")
    parser.add_argument("--backbones", default="resnet18,vgg16,dinov2_vits14,dinobloom_s")
    parser.add_argument("--n", type=int, default=32, help="images (evenly spaced over the dataset)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--variants", default="compute,e2e")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def compute(trunk: torch.nn.Module, batches: list[torch.Tensor], precision: str) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        for x in batches:
            embed(trunk, x)
    return time.perf_counter() - start


def e2e(manifest, name: str, args, precision: str, workdir: Path) -> float:
    config = engine.ExtractConfig(backbones=[name], weights={name: RANDOM}, preprocess=Preprocess(
        input_size=args.input_size), device="cpu", precision=precision, batch_size=args.batch_size,
        overwrite=True, progress=False, dedupe=True)
    start = time.perf_counter()
    engine.extract(manifest, workdir / f"{name}.h5", config)
    seconds = time.perf_counter() - start
    (workdir / f"{name}.h5").unlink()
    return seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.simplefilter("ignore", RandomWeightsWarning)  # random on purpose: speed does not depend on weights
    report = run_header("benchmarks/encoder_throughput.py", argv)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(f"precision: {precision}; input {args.input_size} px; batch {args.batch_size}; {args.n} images", flush=True)
    manifest = subset_manifest(args.data, args.n)
    pre = Preprocess(input_size=args.input_size).with_stats(*input_stats(args.backbones))
    images = torch.cat([pre.load(str(manifest.absolute(s)))[0] for s in manifest.samples])
    mean, std = pre.mean_std()
    batches = [normalize_batch(images[i:i + args.batch_size], mean, std).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(images), args.batch_size)]  # as the engine feeds its trunks
    trunks = {b: load_backbone(b, RANDOM).trunk.to(memory_format=torch.channels_last) for b in args.backbones}
    gflops = {b: flops_per_image(t, args.input_size) / 1e9 for b, t in trunks.items()}
    for trunk in trunks.values():  # warm-up, untimed
        compute(trunk, batches[:1], precision)
    times: dict[tuple[str, str], list[float]] = {(b, v): [] for b in args.backbones for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = args.backbones[r % len(args.backbones):] + args.backbones[:r % len(args.backbones)]
            for b in order:
                for v in args.variants:
                    s = compute(trunks[b], batches, precision) if v == "compute" else \
                        e2e(manifest, b, args, precision, Path(tmp))
                    times[(b, v)].append(s)
                    print(f"repeat {r + 1} {b:>14} {v:>8}: {len(images) / s:7.2f} images/s", flush=True)
    rows = []
    print("\n| backbone | pooled dim | tokens | GFLOPs/image | variant | images/s (median) | min–max |")
    print("|---|---:|---|---:|---|---:|---|")
    for (b, v), secs in times.items():
        rates = [len(images) / s for s in secs]
        shape = probe(b, args.input_size)
        rows.append({"backbone": b, "variant": v, "images_per_s": rates, "gflops": gflops[b]})
        print(f"| {b} | {shape.dim} | {shape.grid}×{shape.grid} | {gflops[b]:.2f} | {v} | "
              f"{statistics.median(rates):.2f} | {min(rates):.2f}–{max(rates):.2f} |")
    report.update(precision=precision, rows=rows)
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
