"""``python -m fusionfeat`` and the ``fusionfeat`` console script (also what ``torchrun -m fusionfeat`` runs).

SIGTERM handling is installed before anything heavy is imported, so an interruption during start-up (importing
torch takes seconds) ends in one line too.
"""

from __future__ import annotations

import sys

from fusionfeat import interrupts


def run() -> int:
    """Run the command line; an interruption at any moment is one line and exit 130 (SIGINT) or 143 (SIGTERM)."""
    interrupts.install()
    try:
        from fusionfeat.cli import main

        main()
    except (KeyboardInterrupt, interrupts.Terminated) as exc:
        return interrupts.exit_interrupted(exc)
    return 0


if __name__ == "__main__":
    sys.exit(run())
