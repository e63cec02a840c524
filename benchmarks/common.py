"""What the benchmark scripts share: where the real images are, a small subset of them, the machine line."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision

import fusionfeat
from fusionfeat.data.manifest import Manifest, build_manifest
from fusionfeat.runtime import autocast, cpu_bf16_speedup, cpu_supports_bf16

REPO = Path(__file__).resolve().parents[1]
# beside the repo here; inside it (.devdata/, ignored, carried) on a lent device machine
DEFAULT_DATA = next((p for p in (REPO.parent / "shared" / "data" / "ALL_IDB2", REPO / ".devdata" / "ALL_IDB2")
                     if p.is_dir()), REPO.parent / "shared" / "data" / "ALL_IDB2")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


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
        "cpu_bf16_speedup": round(cpu_bf16_speedup(), 2),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
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


def cpu_flags() -> list[str]:
    """Which of the flags that decide CPU GEMM speed (:data:`CPU_FLAGS`) /proc/cpuinfo lists."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in CPU_FLAGS if f in flags]


def run_header(script: str, argv: Sequence[str] | None = None) -> dict:
    """Print and return what every benchmark states first: command, date, machine, CPU flags, load average."""
    argv = sys.argv[1:] if argv is None else argv
    info = {"command": " ".join(["python", script, *map(shlex.quote, argv)]),
            "date": utc_now(),
            "machine": machine_info(), "load_average_start": list(os.getloadavg())}
    m = info["machine"]
    print(f"command: {info['command']}")
    print(f"date: {info['date']}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags']) or 'none of ' + str(CPU_FLAGS)}, "
          f"torch {m['torch']} ({m['torch_threads']} threads), gpu {m['gpu'] or 'none'}")
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*info["load_average_start"]), flush=True)
    return info


def run_trunks(batches: Sequence[torch.Tensor], trunks: Sequence[torch.nn.Module], device: torch.device,
               precision: str, keep_tokens: bool = False) -> dict:
    """Compute-only: every trunk on every (already normalised, on-device) batch, pooled as the engine pools
    (and, with ``keep_tokens``, the fp16 token maps brought to the host as the engine does). Seconds, images."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for x in batches:
            for trunk in trunks:
                fmap = trunk(x)
                pooled = fmap.float().mean(dim=(2, 3))
                if keep_tokens:
                    fmap.flatten(2).transpose(1, 2).to(torch.float16).cpu()
                    pooled = pooled.cpu()
    sync()
    return {"seconds": time.perf_counter() - start, "images": sum(len(b) for b in batches)}


def flops_per_image(module: torch.nn.Module, input_size: int, device: torch.device | str = "cpu") -> float:
    """FLOPs of one forward of ``module`` on one image, counted by torch (FlopCounterMode; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, input_size, input_size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 2


def measured(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd`` in a fresh probe process; wall seconds, the child's peak RSS (MiB), exit code, output tail."""
    probe = [sys.executable, "-c",
             "import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))\n"
             "sys.stderr.write((p.stdout + p.stderr)[-3000:])\n"
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
             str(timeout), *cmd]
    start = time.perf_counter()
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - start, "peak_rss_mib": None, "rc": "timeout", "tail": ""}
    seconds = time.perf_counter() - start
    if out.returncode:  # the probe itself failed: the step timed out inside it
        return {"seconds": seconds, "peak_rss_mib": None, "rc": "timeout", "tail": out.stderr[-1500:]}
    rc, kib = out.stdout.split()[-2:]
    return {"seconds": seconds, "peak_rss_mib": int(kib) / 1024, "rc": int(rc), "tail": out.stderr[-1500:]}
