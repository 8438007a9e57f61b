"""``python -m efficientdet_graph`` (and ``torchrun -m efficientdet_graph train ...``)."""

import sys

from .cli import main

sys.exit(main())
