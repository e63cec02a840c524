"""The heads' CPU thread rule under load: ``fit --head all --cv stratified`` with 1 vs 2 torch threads, idle and with
a background process spinning on one core (started and stopped here), all in one run, each fit time-bounded.

Configurations (each a fresh ``fusionfeat fit`` subprocess, interleaved, ``--repeats`` times):
``default`` (no ``--threads``: the library's rule), ``--threads 1``, ``--threads 2``; each idle and busy.

    python benchmarks/threads.py                      # 260 ALL-IDB2 images at 224 px, 2 repeats (a quiet machine)
    python benchmarks/threads.py --quick              # 40 images at 64 px, 1 repeat: a dry run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/common.py: the script folder is on sys.path
from common import DEFAULT_DATA, REPO, measured, run_header, subset_manifest

from fusionfeat.data.manifest import write_manifest

SETTINGS = {"default": [], "1": ["--threads", "1"], "2": ["--threads", "2"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=260, help="ALL-IDB2 images (evenly spaced)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--heads", default="all")
    parser.add_argument("--settings", default="default,1,2", help="comma list of default, 1, 2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="stop one fit after this long")
    parser.add_argument("--quick", action="store_true", help="dry run: 40 images at 64 px, 1 repeat, 300 s cap")
    parser.add_argument("--work", type=Path, default=REPO / ".devdata" / "threads")
    parser.add_argument("--out", type=Path, default=REPO / ".devdata" / "threads.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.input_size, args.repeats, args.timeout_s = 40, 64, 1, min(args.timeout_s, 300.0)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if set(args.settings) - set(SETTINGS) or not args.settings or args.repeats < 1:
        parser.error("--settings: a comma list of default, 1, 2; --repeats at least 1")
    return args


def spinner() -> subprocess.Popen:
    """A process that keeps one core busy (a pure-Python loop: one thread)."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    header = run_header("benchmarks/threads.py", argv)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, list[dict]] = {}
    try:
        manifest_csv = write_manifest(subset_manifest(args.data, args.n), work / "manifest.csv")
        store = work / "store.h5"
        made = measured([sys.executable, "-m", "fusionfeat", "extract", str(manifest_csv), "-o", str(store),
                         "--weights", "random", "--input-size", str(args.input_size), "--quiet"], args.timeout_s)
        if made["rc"] != 0:
            sys.exit(f"error: extraction of the store failed ({made['rc']}): {made['tail'][-800:]}")
        print(f"store: {args.n} images at {args.input_size} px in {made['seconds']:.1f} s", flush=True)
        jobs = [(s, load) for s in args.settings for load in ("idle", "busy")]
        for r in range(args.repeats):
            shift = r % len(jobs)
            for setting, load in jobs[shift:] + jobs[:shift]:
                busy = spinner() if load == "busy" else None
                try:
                    time.sleep(0.5 if busy else 0)
                    run_dir = work / f"run-{setting}-{load}"
                    shutil.rmtree(run_dir, ignore_errors=True)
                    run = measured([sys.executable, "-m", "fusionfeat", "fit", str(store), "--head", args.heads,
                                    "--cv", "stratified", "-o", str(run_dir), "--quiet", *SETTINGS[setting]],
                                   args.timeout_s)
                finally:
                    if busy:
                        stop(busy)
                run["load_1min"] = os.getloadavg()[0]
                results.setdefault(f"{setting} {load}", []).append(run)
                print(f"  repeat {r + 1}: threads {setting:7s} {load}: {run['seconds']:7.1f} s (rc {run['rc']}, "
                      f"load {run['load_1min']:.1f})", flush=True)
                if run["rc"] != 0:
                    print(run["tail"][-600:], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float | None:
        ok = [r["seconds"] for r in results.get(key, []) if r["rc"] == 0]
        return statistics.median(ok) if ok else None

    lines = ["| threads | idle (s) | one core busy (s) | busy / idle |", "|---|---:|---:|---:|"]
    summary = {}
    for setting in args.settings:
        idle, busy = median(f"{setting} idle"), median(f"{setting} busy")
        ratio = busy / idle if idle and busy else None
        summary[setting] = {"idle_s": idle, "busy_s": busy, "busy_over_idle": ratio}
        fmt = lambda v: "timeout/failed" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {setting} | {fmt(idle)} | {fmt(busy)} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    md = "\n".join(lines)
    load_end = list(os.getloadavg())
    report = {**header, "n": args.n, "input_size": args.input_size, "heads": args.heads, "repeats": args.repeats,
              "timeout_s": args.timeout_s, "runs": results, "summary": summary, "load_average_end": load_end}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(md)
    default = summary.get("default", {}).get("busy_over_idle")
    if default is not None:
        print(f"default options, busy / idle: {default:.2f} (target <= 1.5: {'met' if default <= 1.5 else 'NOT met'})")
    print(f"load average (1 min) start / end: {header['load_average_start'][0]:.2f} / {load_end[0]:.2f} "
          "(the other processes on the machine count too)")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
