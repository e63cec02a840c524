"""``python -m fusionfeat`` (also what ``torchrun -m fusionfeat`` runs)."""

from fusionfeat.cli import main

main()
