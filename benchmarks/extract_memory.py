"""Peak memory of `fusionfeat extract` does not grow with the number of images.

Runs the real CLI in fresh subprocesses over generated datasets of increasing size (same image size,
same settings) and reports each child's peak RSS (``ru_maxrss``). Usage:

    python benchmarks/extract_memory.py --sizes 100,400,1600 --input-size 64
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fusionfeat.data.synthetic import generate_class_folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,400,1600", help="Dataset sizes (images), comma-separated.")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"# command per size: fusionfeat extract DATA -o S.h5 --weights random --input-size {args.input_size} "
          f"--batch-size {args.batch_size} --quiet (both backbones, tokens kept)")
    print("| images | peak RSS (MB) | wall (s) |\n|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = generate_class_folders(Path(tmp) / f"d{n}", n_per_class=n // 2, size=args.image_size, seed=0)
            store = Path(tmp) / f"s{n}.h5"
            cmd = [sys.executable, "-m", "fusionfeat", "extract", str(data), "-o", str(store), "--weights", "random",
                   "--input-size", str(args.input_size), "--batch-size", str(args.batch_size), "--quiet"]
            # ru_maxrss of RUSAGE_CHILDREN is the max over all children so far: run each size in its own shell.
            probe = [sys.executable, "-c",
                     "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                     "stdout=subprocess.DEVNULL); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
            start = time.perf_counter()
            out = subprocess.run(probe, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"extract failed: {out.stderr[-500:]}")
            print(f"| {n} | {int(out.stdout.split()[-1]) / 1024:.0f} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
