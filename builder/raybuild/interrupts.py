"""SIGTERM handled like Ctrl-C: one exception, raised in the main thread, unwinding every cleanup.

CI cancels a job, and `timeout` ends a command, with SIGTERM, whose default action kills the process on
the spot: no `finally` runs, so a staged build context, a smoke container or a half-started cluster would
stay behind. While a command runs, SIGINT and SIGTERM both raise ``Interrupted`` instead. It subclasses
KeyboardInterrupt, so the cleanups that already handle Ctrl-C (context managers, ``finally`` blocks,
``Engine.run`` killing its child process, ``up`` taking its cluster down) handle SIGTERM the same way, and
``cli.main`` turns it into one message and the shell's exit code for the signal (130, 143).

Only the first signal raises: a second one, while those cleanups run, is ignored (with a note on stderr),
so that a second Ctrl-C or a repeated SIGTERM cannot cut the cleanup short. SIGKILL still stops
everything at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was interrupted by ``signum``; the process exits with 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def raised_on_signals(signals: tuple[signal.Signals, ...] = HANDLED) -> Iterator[None]:
    """While inside, the first of ``signals`` raises ``Interrupted``; the old handlers come back after."""
    raised: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if raised:
            os.write(2, b"raybuild: still cleaning up after the interruption; SIGKILL stops at once\n")
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
