"""``python -m fusionfeat`` and the ``fusionfeat`` console script (also what ``torchrun -m fusionfeat`` runs).

SIGTERM handling is installed before anything heavy is imported, so an interruption during start-up (importing
torch takes seconds) ends in one line too.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import sys

from fusionfeat import interrupts


def run() -> int:
    """Run the command line; an interruption at any moment is one line and exit 130 (SIGINT) or 143 (SIGTERM)."""
    _utf8_file_names()
    interrupts.install()
    try:
        os.getcwd()
    except OSError:  # torch's libraries cannot even load then ("oneMKL FATAL ERROR"): say it plainly, first
        print("fusionfeat: error: the current folder no longer exists (deleted or unmounted); cd to an existing "
              "folder and rerun", file=sys.stderr)
        return 2
    try:
        from fusionfeat.cli import main

        main()
    except (KeyboardInterrupt, interrupts.Terminated) as exc:
        interrupts.leave(interrupts.exit_interrupted(exc))
    except SystemExit:
        if interrupts.ended() is not None:  # the command's own handler said the line: exit with its status
            interrupts.leave(interrupts.ended())
        interrupts.settle()  # the command is over: a signal during the interpreter's teardown (which puts the
        raise  # default handlers back) would otherwise end a finished command with -15 and no line
    except OSError as exc:
        if exc.filename is not None or exc.errno not in STDOUT_ERRORS:
            raise
        return _stdout_failed(exc)
    return 0


def _utf8_file_names() -> None:
    """Start again in Python's UTF-8 mode when file names would be read as ASCII.

    Under the C locale Python 3.7+ normally switches to UTF-8 mode by itself; with ``PYTHONUTF8=0`` (or a
    locale whose encoding is ASCII) it does not, and every valid UTF-8 file or class name then reads as
    undecodable bytes, refused as "not valid UTF-8". The store, manifests and CSVs are UTF-8, so fusionfeat
    always reads names as UTF-8: the same command line is executed again with ``-X utf8``."""
    if sys.flags.utf8_mode or codecs.lookup(sys.getfilesystemencoding()).name != "ascii":
        return
    argv = list(getattr(sys, "orig_argv", []))
    if not argv:
        return
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-X", "utf8", *argv[1:]])


STDOUT_ERRORS = (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EFBIG, errno.EDQUOT)


def _stdout_failed(exc: OSError) -> int:
    """Standard output could not be written (``> /dev/full``, a closed pipe): one line on stderr, exit 2, and
    stdout pointed at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    with contextlib.suppress(OSError, ValueError):
        print(f"fusionfeat: error: cannot write to standard output ({exc.strerror or exc}); the command's own "
              "files are written as usual, only its messages were lost", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(run())
