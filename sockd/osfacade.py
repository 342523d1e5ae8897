"""The operating system as the master and the process models call it.

One object, ``OS``, makes every system call they make: fork, kill, the
reaping of children, pipes, the signal mask, the clock, polling, the
listening sockets (socket activation's too), the signal pipe and the
recheck channel, systemd's notifications, the process title.  The master is handed one; tests hand it a fake (supervisor's
options object is the model), so that they drive the master and its
process models without starting a process.  Each method is a thin wrapper
with the contract of the call it wraps.

What runs after a fork, in a serving process, calls the OS directly: only
the supervising side needs to be driven by tests.  Must not import the
master, the process models or the serving processes.
"""

import fcntl
import gc
import os
import select
from time import monotonic, sleep, time as wall_clock

from .activation import inherited_sockets
from .channel import Channel
from .listeners import open_listener
from .rehearsal import rehearse
from .sdnotify import Notifier
from .signals import Signals, sigmask

try:
    from setproctitle import setproctitle
except ImportError:                      # titles are a convenience, not a need
    def setproctitle(title):
        pass


class OS:
    """The real system.  Every method may raise OSError as its call does."""

    fork = staticmethod(os.fork)
    kill = staticmethod(os.kill)
    getpid = staticmethod(os.getpid)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    sigmask = staticmethod(sigmask)
    monotonic = staticmethod(monotonic)
    time = staticmethod(wall_clock)
    sleep = staticmethod(sleep)
    cpu_count = staticmethod(os.cpu_count)
    set_title = staticmethod(setproctitle)
    open_listener = staticmethod(open_listener)
    # socket activation's sockets and systemd's notifications: each reads
    # (and unsets) its environment variables once
    inherited_sockets = staticmethod(inherited_sockets)
    notifier = staticmethod(Notifier.from_environ)

    @staticmethod
    def pipe(nonblocking_read=False, size=0):
        """(read end, write end), close-on-exec; the read end non-blocking
        when asked; holding ``size`` bytes when asked and the system lets
        it (F_SETPIPE_SZ; else its default)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        if nonblocking_read:
            os.set_blocking(r, False)
        if size:
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
            except (OSError, AttributeError):
                pass
        return r, w

    @staticmethod
    def reap():
        """(pid, exit code) of one child that has ended, or None when none
        has (or there is no child).  Never blocks.  The exit code is
        negative for a child killed by a signal."""
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        return pid, os.waitstatus_to_exitcode(status)

    @staticmethod
    def poller():
        """A new select.poll object."""
        return select.poll()

    @staticmethod
    def signals():
        """This process's signal pipe (signals.Signals)."""
        return Signals()

    @staticmethod
    def channel():
        """A new recheck channel (channel.Channel)."""
        return Channel()

    rehearsed = False

    @classmethod
    def rehearse(cls):
        """Serve the fork model's made-up clients (rehearsal.py), once per
        process: the code it warms stays warm.  Returns how many."""
        if cls.rehearsed:
            return 0
        cls.rehearsed = True
        return rehearse()

    @staticmethod
    def freeze_heap():
        """Collect once, then keep the collector off everything that exists
        now: children forked later do not copy those pages by collecting."""
        gc.collect()
        gc.freeze()
