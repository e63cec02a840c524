"""What the benchmark scripts share: where the real images are, a small subset of them, the machine line."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

import fusionfeat
from fusionfeat.data.manifest import Manifest, build_manifest
from fusionfeat.runtime import cpu_supports_bf16

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ALL_IDB2"


def subset_manifest(data: Path, n: int, option: str = "--n") -> Manifest:
    """``n`` evenly spaced samples (ALL-IDB2 lists one class, then the other: both are represented)."""
    if not data.is_dir():
        sys.exit(f"error: image folder {data} not found; fetch ALL-IDB2 into {DEFAULT_DATA} or pass --data DIR")
    full = build_manifest(data)
    if len(full) < n:
        sys.exit(f"error: {data} has {len(full)} images, fewer than {option} {n}")
    step = len(full) / n
    return Manifest(full.root, [full.samples[int(i * step)] for i in range(n)], full.classes, full.layout)


def machine_info() -> dict:
    """CPU model (from lscpu), cores, torch threads and capability, and the software versions."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fusionfeat": fusionfeat.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
    }


def utc_now() -> str:
    """The current UTC time to the second (ISO 8601), for a report's date."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_report(report: dict, path: Path | None) -> dict:
    """Write ``report`` as indented JSON to ``path`` (when given, parents created) and say so; returns it."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return report


def benchmark_parser(doc: str, data_help: str) -> argparse.ArgumentParser:
    """A script's argument parser, described by the first paragraph of its ``doc``, with its ``--data`` option."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=data_help)
    return parser
