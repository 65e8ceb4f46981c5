"""``python -m scratchlm``: the same entry point as the ``scratchlm`` command."""

import sys

from scratchlm.cli import main

sys.exit(main())
