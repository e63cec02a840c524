"""Ctrl-C and ``kill``: SIGINT and SIGTERM end every command with one line and exit 130 / 143, never a traceback.

``install`` (the first thing the console script does, before the heavy imports) turns SIGTERM into
``Terminated``, an exception like ``KeyboardInterrupt``, so context managers and ``finally`` blocks clean up
(temporary outputs removed, locks released) exactly as for Ctrl-C. Work that survives an interruption says so
with ``keeping(...)``; the line then names it and says to run the same command again, else it says that nothing
was written (outputs are only swapped into place once complete).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, like ``KeyboardInterrupt`` for SIGINT)."""


_kept: list[str] = []  # what interrupted work leaves behind that the same command resumes from
_installed: list[bool] = []  # set by install(): this process is the command line, not a host such as a notebook
_ended: list[int] = []  # exit code of an interruption already reported (its line printed)


def install() -> None:
    """Raise ``Terminated`` on SIGTERM (main thread only; elsewhere, e.g. under an embedding host, a no-op), and
    never lose an interruption that Python would swallow (see ``_unraisable``)."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _terminate)
        _installed.append(True)
        if sys.unraisablehook is not _unraisable:
            _previous_hook.append(sys.unraisablehook)
            sys.unraisablehook = _unraisable


_previous_hook: list = []
_lost: list[type[BaseException]] = []


def _unraisable(unraisable: object) -> None:
    """Python swallows an exception raised where it cannot propagate, printing "Exception ignored in …": a
    Ctrl-C that lands in an ``os.fork`` callback (``logging``'s, as data-loader workers start) would be lost and
    the command would run on. Such an interruption is delivered again a moment later, from a timer, where it
    propagates as usual; anything else goes to the previous hook."""
    exc = getattr(unraisable, "exc_value", None)
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        _lost.append(type(exc))
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGALRM, _deliver_lost)
            signal.setitimer(signal.ITIMER_REAL, 0.01)
        return
    (_previous_hook[-1] if _previous_hook else sys.__unraisablehook__)(unraisable)


def _deliver_lost(signum: int, frame: object) -> None:
    if _lost:
        raise _lost.pop()()


def reset() -> None:
    """Forget earlier notes (a new command starts; tests run many in one process)."""
    _kept.clear()
    _ended.clear()


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def keeping(what: str) -> Iterator[None]:
    """Say, should the command be interrupted inside this block, that ``what`` is kept for a rerun."""
    _kept.append(what)
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        raise  # the note stays for the line the interruption ends with
    finally:
        if not isinstance(sys.exc_info()[1], KeyboardInterrupt | Terminated):
            _kept.remove(what)


def settle() -> None:
    """Ignore further SIGINT/SIGTERM while the interrupted command says its line and exits (a second Ctrl-C
    would otherwise interrupt that, with a traceback). Only in the command-line process (see ``install``)."""
    if not _installed:
        return
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupted_line(exc: BaseException) -> tuple[str, int]:
    """The one line (and exit code) that ends a command interrupted by ``exc``; later signals are ignored."""
    settle()
    name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    _ended.append(EXIT_CODES[name])
    if _kept:
        told = f"{_kept[-1]} kept, run the same command to resume"
    else:
        told = "nothing written (outputs are only put in place once complete)"
    return f"fusionfeat: interrupted ({name}); {told}", EXIT_CODES[name]


def ignore_in_worker(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of data-loader workers: Ctrl-C (and a scheduler's SIGTERM, e.g. ``scancel``) reaches the
    whole process group, and only the main process should answer it (it stops the workers), not workers dying on
    their own, which makes the loader raise in the main process while it shuts down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def ended() -> int | None:
    """The exit code of an interruption whose line was already printed, else None."""
    return _ended[-1] if _ended else None


def leave(code: int) -> None:
    """End the process now with ``code``, after an interruption was reported and cleaned up after: flush the
    streams and skip the interpreter's teardown (joining worker threads, collecting loaders), which a second
    signal or a dying worker could otherwise turn into a traceback or a different exit status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def exit_interrupted(exc: BaseException) -> int:
    """Print the line for ``exc`` on stderr; returns the exit code."""
    line, code = interrupted_line(exc)
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
    return code
