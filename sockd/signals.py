"""Signals as every sockd process receives them: the handlers only record.

Owns the set of signals sockd handles, the pipe a poll loop reads them
from (the C-level wakeup fd writes each signal's number there), and the
mask that keeps them out while a process forks.  The loop that reads the
pipe acts on them; nothing is done inside a handler.

Imports nothing of sockd: the master, the process models and the serving
processes all build on it.
"""

import _signal
import os
import signal

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)

# the C functions: signal.pthread_sigmask and signal.signal wrap their
# results in Enum members, which costs more than the system calls on the
# fork model's per-client path (signal.signal of a handler that is a
# function raises and catches a ValueError inside enum: five of them were
# ~200 us of a child's CPU; docs/performance.md section 3)
sigmask = _signal.pthread_sigmask
handle = _signal.signal


class Signals:
    """Signals as bytes on a pipe that a poll loop reads (``r``)."""

    def __init__(self):
        """Install the recording handler for every handled signal and make
        this pipe the process's wakeup fd.  Raises OSError (no descriptors)."""
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED_SIGNALS:
            handle(sig, _record)
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)

    def read(self):
        """The signals recorded since the last read, each once, in order of
        arrival.  Never blocks; [] when there is none."""
        try:
            data = os.read(self.r, 512)
        except (BlockingIOError, InterruptedError):
            return []
        seen = []
        for b in data:
            if b not in seen:
                seen.append(b)
        return seen

    def close(self):
        """No wakeup fd any more, and the pipe closed (in a new child: the
        master's pipe is not its own)."""
        signal.set_wakeup_fd(-1)
        os.close(self.r)
        os.close(self.w)


def _record(signum, frame):
    """The Python-level handler: the wakeup fd has already recorded it."""


def reset_child_signals():
    """The default disposition for every handled signal, and no wakeup fd:
    for a process that does not read a signal pipe of its own."""
    signal.set_wakeup_fd(-1)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
