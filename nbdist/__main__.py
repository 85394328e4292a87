"""``python -m nbdist generate ...`` (also what ``torchrun -m nbdist`` and ``accelerate launch -m nbdist`` run)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
