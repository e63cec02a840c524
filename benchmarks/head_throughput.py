"""Training throughput of the torch heads against this machine's GEMM peak (issue 10, item 4).

Trains each head through ``TorchHeadClassifier.fit`` (the code ``fusionfeat fit`` runs: float16 token rows
converted per batch, AdamW, cross-entropy) for a fixed number of epochs on random C-NMC-shaped token rows
(resnet18 + vgg16, 7×7×512 each), without a validation split so that every epoch trains the same rows. Reports
rows/s, the FLOP per training row counted by ``torch.utils.flop_counter.FlopCounterMode`` on one training step
(forward + backward, not typed in), the achieved GFLOP/s and its fraction of the fp32 GEMM peak measured in the
same process at the same thread count.

    python benchmarks/head_throughput.py --rows 2048 --epochs 2 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/common.py: the script folder is on sys.path
from common import run_header, write_report
from extract_throughput import gemm_peak
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusionfeat.heads.torch_head import TorchHeadClassifier, build_module

BLOCKS = ((49, 512), (49, 512))  # resnet18 and vgg16 token maps at 224 px


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048, help="training rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--architectures", default="attention-spatial,mlp,attention-pooled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the heads' default rule is 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def train_flop_per_row(architecture: str, batch_size: int) -> float:
    """FLOP of one training step (forward, cross-entropy, backward) per row, counted on the real module."""
    module = build_module(architecture, BLOCKS, 2, 512, 0.2, 128, 4).train()
    x = torch.randn(batch_size, sum(t * c for t, c in BLOCKS))
    y = torch.randint(0, 2, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(module(x), y).backward()
    return counter.get_total_flops() / batch_size


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header = run_header("benchmarks/head_throughput.py", argv)
    rng = np.random.default_rng(0)
    width = sum(t * c for t, c in BLOCKS)
    X = np.maximum(rng.standard_normal((args.rows, width), dtype=np.float32), 0).astype(np.float16)
    y = rng.integers(0, 2, args.rows)
    peak_before = gemm_peak(torch.float32, 2048, 5)
    results = []
    for architecture in [a.strip() for a in args.architectures.split(",") if a.strip()]:
        flop = train_flop_per_row(architecture, args.batch_size)
        head = TorchHeadClassifier(blocks=BLOCKS, architecture=architecture, batch_size=args.batch_size,
                                   max_epochs=args.epochs, val_fraction=0.0, random_state=0, device="cpu")
        TorchHeadClassifier(**{**head.get_params(), "max_epochs": 1}).fit(X[:256], y[:256])  # warm-up
        start = time.perf_counter()
        head.fit(X, y)
        seconds = time.perf_counter() - start
        rows_per_s = args.rows * args.epochs / seconds
        results.append({"architecture": architecture, "seconds": seconds, "rows_per_s": rows_per_s,
                        "train_mflop_per_row": flop / 1e6, "gflop_per_s": rows_per_s * flop / 1e9})
    peak = max(peak_before, gemm_peak(torch.float32, 2048, 5))
    print(f"fp32 GEMM peak at {args.threads} thread(s): {peak / 1e9:.1f} GFLOP/s (best of before/after)")
    print("| head | rows/s | train MFLOP/row | GFLOP/s | fraction of GEMM peak |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        r["fraction_of_peak"] = r["gflop_per_s"] * 1e9 / peak
        print(f"| {r['architecture']} | {r['rows_per_s']:.0f} | {r['train_mflop_per_row']:.1f} | "
              f"{r['gflop_per_s']:.1f} | {r['fraction_of_peak']:.2f} |")
    report = {**header, "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
              "threads": args.threads, "gemm_peak_gflop_s": peak / 1e9, "results": results}
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
