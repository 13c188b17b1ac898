"""``python -m spoco``: the command line (also what ``torchrun -m spoco train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
