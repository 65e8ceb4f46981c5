"""Whether a command draws live progress bars: only on a terminal."""

from __future__ import annotations

import sys


def live_progress(quiet: bool = False) -> bool:
    """True when stderr is a terminal and the user did not ask for quiet. A bar redrawn
    in a file or a pipe leaves its carriage-return frames behind as stray lines
    (``reading: 0.00char [00:00, ?char/s]``), so there a command prints plain lines."""
    return not quiet and sys.stderr.isatty()
