"""What commands show while they work: live progress bars on a terminal, an occasional
plain line elsewhere (a log file, a pipe), where a bar's redrawn frames would stay as
stray lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

# Off a terminal, a long job prints a line about this often, so a log shows it is alive.
LINE_EVERY_SECONDS = 10.0


def live_progress(quiet: bool = False) -> bool:
    """True when stderr is a terminal and the user did not ask for quiet. A bar redrawn
    in a file or a pipe leaves its carriage-return frames behind as stray lines
    (``reading: 0.00char [00:00, ?char/s]``), so there a command prints plain lines."""
    return not quiet and sys.stderr.isatty()


class CountProgress:
    """Progress of a job counted in units (questions answered, tokens generated), on
    stderr. On a terminal, a bar (``answering: 42/180 questions``), redrawn as it goes
    and left in place at the end with the time taken. Elsewhere, a plain line when
    ``every`` seconds have passed since the start or the last line, and a last one at
    the end if any was printed: a job that ends quickly prints nothing. ``clock``
    returns seconds; tests pass a fake one."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        *,
        live: bool | None = None,
        every: float | None = None,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._file = file if file is not None else sys.stderr
        self._live = live_progress() if live is None else live
        self._every = LINE_EVERY_SECONDS if every is None else every
        self._clock = clock
        self._last_line = clock()
        self._lines = 0
        self._bar = None
        if self._live:
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self._file, leave=True)

    def update(self, done: int) -> None:
        """``done`` of ``total`` units are finished (a count, not an increment)."""
        assert 0 <= done <= self.total, (done, self.total)
        self.done = done
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            return
        now = self._clock()
        if now - self._last_line >= self._every:
            self._line()
            self._last_line = now

    def part(self) -> Callable[[int], None]:
        """An ``update`` for the next part of the job (one of several question files),
        which counts its own units from 0: they are added to what is done so far."""
        before = self.done
        return lambda done: self.update(before + done)

    def _line(self) -> None:
        self._file.write(f"{self.desc}: {self.done}/{self.total} {self.unit}\n")
        self._file.flush()
        self._lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self.done == self.total:
            self._line()

    def __enter__(self) -> CountProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
