"""Progress that fits where it goes: one live bar on a terminal, a few timestamped log lines everywhere else.

Every long loop of fusionfeat opens a :func:`progress` reporter. What the reporter shows depends on where the
output goes, not on the loop:

* **a terminal** (or a notebook): a single tqdm bar. A reporter opened inside another one (a torch head's
  epochs inside the cross-validation loop) draws no bar of its own: its state is appended to the outer bar's
  text, so the bar stays one line and never moves the cursor up;
* **anything else** (``> log 2>&1``, a cluster job's output file): no bar, but ``logging`` INFO lines on the
  ``fusionfeat.progress`` logger, at most one every :data:`LINE_INTERVAL` seconds
  (``cross-validation: fit 12/35 (34%), resnet18 fold 2 ... [1m02s, ~1m58s left]``).

Stage ends (a head cross-validated, an extraction finished, an epoch of fine-tuning) are always logged, with
or without live progress (``--quiet``), and are never rate-limited. The library never configures logging:
the command line does (:func:`install_handler`); a Python user sees the lines after
``logging.basicConfig(level=logging.INFO)``. ``FUSIONFEAT_PROGRESS=bars`` or ``=lines`` forces either form
(for a pseudo-terminal that is really a log file, say). Only rank 0 of a ``torchrun`` job logs.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import time
import weakref
from collections.abc import Mapping
from typing import Any

LOGGER = logging.getLogger("fusionfeat.progress")
LINE_INTERVAL = 30.0  # seconds between two periodic lines when the output is not a terminal
REDRAW_INTERVAL = 0.2  # seconds between two redraws of a terminal bar for a nested reporter's news
LOG_FORMAT = "%(asctime)s %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
MODES = ("bars", "lines")
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # how a log line of the command line starts

_clock = time.monotonic  # the reporters' clock (tests replace it)
_active: list[weakref.ref[Progress]] = []  # open reporters, outermost first (see _open)
_last_line = [-math.inf]  # monotonic time of the last line logged (periodic or stage end)


def _open() -> list[Progress]:
    """The open reporters, outermost first. One left unclosed (an exception skipped its ``close``) drops out
    once it is garbage, so it cannot pose as the outer loop of every later one."""
    keep, alive = [], []
    for ref in _active:
        r = ref()
        if r is not None and not r._closed:
            keep.append(ref)
            alive.append(r)
    _active[:] = keep
    return alive


def live_mode() -> str:
    """``bars`` when stderr is a terminal or a notebook runs us, else ``lines`` (``FUSIONFEAT_PROGRESS`` wins)."""
    forced = os.environ.get("FUSIONFEAT_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = sys.stderr
    try:
        if stream is not None and stream.isatty():
            return "bars"
    except (AttributeError, ValueError):  # a closed or odd stream
        pass
    return "bars" if "ipykernel" in sys.modules else "lines"


def _width() -> dict[str, Any]:
    """Follow the terminal's width; a terminal that says it has 0 columns (a bare pseudo-terminal of a batch
    system) gets ``$COLUMNS`` × ``$LINES`` or 80 × 24, not a hidden bar."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    if columns:
        return {"dynamic_ncols": True}
    size = shutil.get_terminal_size()
    return {"ncols": size.columns, "nrows": size.lines}


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a duration a reader takes in at a glance."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def count(n: int, unit: str) -> str:
    """``35 fits``, ``1 fit``, ``259 img`` (abbreviations and plurals stay as they are)."""
    plural = n != 1 and unit.isalpha() and unit not in ("img",) and not unit.endswith("s")
    return f"{n} {unit}{'s' if plural else ''}"


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _emit(message: str) -> None:
    _last_line[0] = _clock()
    if _rank_zero():
        LOGGER.info(message)


class Progress:
    """One reporter: ``update``, ``set_postfix(_str)``, ``set_description``, ``stage`` and ``close`` (or ``with``).

    Made by :func:`progress`; the same calls work whether it draws a bar, logs lines, or is silent.
    """

    def __init__(self, total: int, enabled: bool, desc: str, unit: str = "img", leave: bool = True):
        self.total = int(total)
        self.enabled = bool(enabled)
        self.desc = str(desc)
        self.unit = unit
        self.leave = leave
        self.n = 0
        self.postfix = ""
        self._numbers = False  # the postfix holds numbers (set_postfix), worth keeping in the stage-end line
        self.started = self._stage_started = _clock()
        self._closed = False
        self._outer = _open()
        self._bar = None
        self._redrawn = -math.inf
        _active.append(weakref.ref(self))
        self._lines = live_mode() == "lines"
        if self.enabled and self._display_root() is self and not self._lines:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc, smoothing=0.1, leave=leave, **_width())

    # -- what callers use -------------------------------------------------------------------------------------

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        self._news()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """What is being done now, e.g. ``resnet18 fold 2``."""
        self.postfix, self._numbers = str(s), False
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
        self._news()

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Numbers of the moment, e.g. ``loss=0.41``: shown as ``loss=0.41, acc=0.80``."""
        items = {**(ordered_dict or {}), **kwargs}
        self.set_postfix_str(", ".join(f"{k}={_short(v)}" for k, v in items.items()))
        self._numbers = True

    def set_description(self, desc: str, refresh: bool = True) -> None:
        """Rename the reporter (its bar and its lines)."""
        self.desc = str(desc)
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def stage(self, message: str) -> None:
        """Log the end of a stage now (``label: message [time since the previous stage]``), even when quiet."""
        now = _clock()
        _emit(f"{self.label()}: {message} [{duration(now - self._stage_started)}]")
        self._stage_started = now

    def close(self) -> None:
        """Close the bar; an outermost reporter that finished its work (``leave``) logs its stage end."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.leave and not self._outers() and self.total > 0 and self.n >= self.total:
            elapsed = _clock() - self.started
            rate = f" ({self.n / elapsed:.1f} {self.unit}/s)" if elapsed >= 1 and self.unit == "img" else ""
            extra = f"; {self.postfix}" if self.postfix and self._numbers else ""
            _emit(f"{self.label()}: {count(self.n, self.unit)} done in {duration(elapsed)}{rate}{extra}")
        else:
            root = self._display_root()
            if root is not None and root is not self:
                root._redraw(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- how it is shown --------------------------------------------------------------------------------------

    def label(self) -> str:
        """``study paper > cross-validation``: the descriptions of the open reporters around this one, then its own."""
        return " > ".join([*(r.desc for r in self._outers()), self.desc])

    def _outers(self) -> list[Progress]:
        return [r for r in self._outer if not r._closed]

    def _display_root(self) -> Progress | None:
        """The outermost open reporter that shows progress: it owns the bar, or the periodic lines."""
        return next((r for r in [*self._outers(), self] if r.enabled and not r._closed), None)

    def _status(self) -> str:
        """This reporter's postfix, then each enabled inner reporter's ``desc unit n/total, postfix``."""
        parts = [self.postfix] if self.postfix else []
        is_open = _open()
        inner = is_open[is_open.index(self) + 1:] if self in is_open else []
        for r in inner:
            if r.enabled:
                parts.append(f"{r.desc} {r.unit} {r.n}/{r.total}" + (f", {r.postfix}" if r.postfix else ""))
        return " | ".join(parts)

    def _news(self) -> None:
        if not self.enabled:
            return
        root = self._display_root()
        if root is None:
            return
        if root._bar is not None:
            root._redraw()
        elif root._lines and _clock() - max(_last_line[0], root.started) >= LINE_INTERVAL:
            root._line()

    def _redraw(self, force: bool = False) -> None:
        now = _clock()
        if self._bar is None or (not force and now - self._redrawn < REDRAW_INTERVAL):
            return
        self._redrawn = now
        self._bar.set_postfix_str(self._status(), refresh=True)

    def _line(self) -> None:
        elapsed = _clock() - self.started
        done = f"{self.unit} {self.n}/{self.total}"
        if self.total > 0:
            done += f" ({100 * self.n / self.total:.0f}%)"
        left = f", ~{duration(elapsed / self.n * (self.total - self.n))} left" if 0 < self.n < self.total else ""
        status = self._status()
        _emit(f"{self.label()}: {done}{', ' + status if status else ''} [{duration(elapsed)}{left}]")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def progress(total: int, enabled: bool, desc: str, unit: str = "img", leave: bool = True) -> Progress:
    """The one progress reporter of fusionfeat (see the module's docstring for what it shows where).

    ``enabled=False`` shows no bar and logs no periodic line, but stage ends are still logged. ``leave=False``
    marks a transient loop (a torch head's epochs): no stage-end line when it closes.
    """
    return Progress(total, enabled, desc, unit, leave)


class LineHandler(logging.Handler):
    """Writes fusionfeat's log lines to the current ``sys.stderr`` (through ``tqdm.write`` while a bar is drawn,
    so a line never tears the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = sys.stderr
            if any(r._bar is not None for r in _open()):
                from tqdm.auto import tqdm

                tqdm.write(message, file=stream)
            else:
                stream.write(message + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def install_handler(level: int = logging.INFO) -> tuple[logging.Handler, int, bool]:
    """Show fusionfeat's log lines on stderr, timestamped (``2026-12-03 16:40:12 …``): for the command line.

    Returns what :func:`remove_handler` needs to put the ``fusionfeat`` logger back as it was.
    """
    logger = logging.getLogger("fusionfeat")
    handler = LineHandler(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler, *before


def remove_handler(installed: tuple[logging.Handler, int, bool]) -> None:
    """Undo :func:`install_handler`."""
    handler, level, propagate = installed
    logger = logging.getLogger("fusionfeat")
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
