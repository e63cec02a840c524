"""Run ``fusionfeat fit`` with each head's wall time and peak RSS recorded (a benchmark probe, not a product feature).

    python benchmarks/fit_probe.py PROBE.json fit STORE --head all --cv paper -o RUN

Runs the real CLI in this process. Before each head the kernel's resident-set high-water mark is reset
(``/proc/self/clear_refs``, value 5; Linux only) and read back after it (``VmHWM``), so each head's peak
includes reading its X and every fold, and nothing of the heads before it. Because those resets also lower
what the parent would see as this process's ``ru_maxrss``, the probe keeps the whole run's peak itself
(the highest mark seen, before the first head included) and writes it to PROBE.json with the per-head figures.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float | None:
    """This process's resident-set high-water mark (``VmHWM``) in MiB; None where /proc is not Linux's."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else None


def reset_peak_rss() -> bool:
    """Lower the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    from fusionfeat.cli import main as cli_main
    from fusionfeat.evaluation import cv as evaluate

    heads: dict[str, dict] = {}
    run = {"peak_rss_mib": 0.0}
    original = evaluate._run_head

    def probed(store, spec, *args, **kwargs):
        run["peak_rss_mib"] = max(run["peak_rss_mib"], peak_rss_mib() or 0.0)
        reset = reset_peak_rss()
        start = time.perf_counter()
        try:
            return original(store, spec, *args, **kwargs)
        finally:
            peak = peak_rss_mib()
            heads[spec.name] = {"seconds": time.perf_counter() - start,
                                "peak_rss_mib": peak if reset else None}
            run["peak_rss_mib"] = max(run["peak_rss_mib"], peak or 0.0)

    evaluate._run_head = probed
    sys.argv = ["fusionfeat", *argv]
    code = 0
    try:
        cli_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        run["peak_rss_mib"] = max(run["peak_rss_mib"], peak_rss_mib() or 0.0)
        out.write_text(json.dumps({"rc": code, "run": run, "heads": heads}, indent=2))
    sys.exit(code)


if __name__ == "__main__":
    main()
