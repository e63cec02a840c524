"""Make a benchmark data set from ALL-IDB2: its images copied ``--copies`` times, listed in a manifest CSV.

    python benchmarks/gpu_finetune_data.py .devdata/ALL_IDB2 /tmp/work/data --copies 20
    python benchmarks/gpu_finetune_data.py ../shared/data/ALL_IDB2 /tmp/work/data --copies 1 --n 24

Labels come from the ALL-IDB file names (``ImXXX_1`` blast → all, ``ImXXX_0`` → hem). ``--n`` keeps an evenly
spaced subset of the images first (0: all of them), so small runs still hold both classes.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="ALL-IDB2 folder (with img/ or the .tif files)")
    parser.add_argument("target", type=Path, help="folder to create; manifest.csv is written there")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--n", type=int, default=0, help="images per copy (evenly spaced; 0: all)")
    args = parser.parse_args()
    folder = args.source / "img" if (args.source / "img").is_dir() else args.source
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not images:
        raise SystemExit(f"no ALL-IDB2 .tif images in {folder}")
    if args.n:
        images = [images[round(i * (len(images) - 1) / max(1, args.n - 1))] for i in range(min(args.n, len(images)))]
    rows = []
    for copy in range(args.copies):
        target = args.target / f"c{copy:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, target / image.name)
            rows.append((f"c{copy:02d}/{image.name}", "all" if image.stem.endswith("_1") else "hem"))
    with open(args.target / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    print(f"{len(rows)} images ({len(images)} x {args.copies}) listed in {args.target / 'manifest.csv'}")


if __name__ == "__main__":
    main()
