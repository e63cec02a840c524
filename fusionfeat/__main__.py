"""``python -m fusionfeat`` and the ``fusionfeat`` console script (also what ``torchrun -m fusionfeat`` runs).

SIGTERM handling is installed before anything heavy is imported, so an interruption during start-up (importing
torch takes seconds) ends in one line too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from fusionfeat import interrupts


def run() -> int:
    """Run the command line; an interruption at any moment is one line and exit 130 (SIGINT) or 143 (SIGTERM)."""
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
        raise
    except OSError as exc:
        if exc.filename is not None or exc.errno not in STDOUT_ERRORS:
            raise
        return _stdout_failed(exc)
    return 0


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
