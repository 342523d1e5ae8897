"""A fake of osfacade.OS for driving the master and the process models in
the test process: no fork happens (fork() hands out made-up pids and never
returns 0), no signal is sent (kill() is recorded), and the clock moves
only when a poll finds nothing to do.  The test plays the processes: it
writes their status lines, ends them, and sends the master signals."""

import collections
import errno
import itertools
import signal

from sockd.sdnotify import Notifier


class FakeSocket:
    def __init__(self, peer):
        self.peer = peer
        self.closed = False

    def close(self):
        self.closed = True


class FakeListener:
    """A listening socket: connect() queues a client for accept(), or for
    _accept() (the fork model's: a descriptor, which the owning FakeOS's
    close() closes)."""

    family, type, proto = 2, 1, 0         # AF_INET, SOCK_STREAM

    def __init__(self, fd, host, port, owner=None):
        self.fd = fd
        self.addr = (host, port)
        self.queue = []
        self.owner = owner

    def fileno(self):
        return self.fd

    def getsockname(self):
        if self.fd < 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return self.addr

    def accept(self):
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        sock = self.queue.pop(0)
        return sock, sock.peer

    def _accept(self):
        sock, peer = self.accept()
        fd = next(self.owner._fds)
        self.owner.sockets[fd] = sock
        return fd, peer

    def close(self):
        self.fd = -1

    def connect(self, peer=("127.0.0.1", 5555)):
        sock = FakeSocket(peer)
        self.queue.append(sock)
        return sock


class FakeSignals:
    def __init__(self, fd):
        self.r = fd
        self.pending = []
        self.closed = False

    def read(self):
        out = []
        for sig in self.pending:
            if sig not in out:
                out.append(sig)
        self.pending = []
        return out

    def close(self):
        self.closed = True


class FakeChannel:
    def __init__(self):
        self.published = []

    def publish(self, generation, cfg, recheck_on):
        self.published.append((generation, cfg, recheck_on))

    def close(self):
        pass


class FakePoller:
    def __init__(self, osys):
        self.os = osys
        self.fds = set()
        self.waits = []               # the timeout of every poll, in seconds

    def register(self, fd, mask):
        self.fds.add(fd)

    def unregister(self, fd):
        self.fds.remove(fd)

    def poll(self, timeout_ms):
        self.waits.append(timeout_ms / 1000.0)
        ready = [(fd, 1) for fd in sorted(self.fds) if self.os.readable(fd)]
        if not ready:
            self.os.now += timeout_ms / 1000.0
        return ready


class FakeNotifier(Notifier):
    """A Notifier that records each datagram (a tuple of its lines)."""

    def __init__(self, watchdog=None):
        super().__init__("@fake", watchdog)
        self.sent = []

    def send(self, *lines):
        self.sent.append(lines)
        return True

    def said(self, key):
        """Every datagram with a line starting ``key``."""
        return [d for d in self.sent if any(line.startswith(key) for line in d)]


class FakeReady:
    def __init__(self):
        self.fd = -1
        self.said = None

    def ok(self):
        self.said = "ok"

    def fail(self, message):
        self.said = "error " + message


class FakeOS:
    def __init__(self, cpus=2):
        self.now = 1000.0
        self.cpus = cpus
        self._fds = itertools.count(10)
        self.sockets = {}           # fd -> FakeSocket handed out by a listener's _accept()
        self._pids = itertools.count(2000)
        self.forked = []              # pids, in order
        self.killed = []              # (pid, signal)
        self.ended = collections.deque()
        self.pipes = {}               # read fd -> bytes waiting
        self.listeners = []
        self.groups = []              # open_listener's group, per listener
        self.titles = []
        self.frozen = 0
        self.rehearsed = 0
        self.fork_error = None
        self.sig = None
        self.poller_made = None
        self.channel_made = None
        self.inherited = []           # activation.Inherited-like objects
        self.notifier_made = FakeNotifier()

    # --- the facade
    def fork(self):
        if self.fork_error is not None:
            raise OSError(self.fork_error, "Resource temporarily unavailable")
        pid = next(self._pids)
        self.forked.append(pid)
        return pid

    def kill(self, pid, sig):
        self.killed.append((pid, sig))

    def getpid(self):
        return 4242

    def close(self, fd):
        sock = self.sockets.pop(fd, None)
        if sock is not None:
            sock.close()

    def read(self, fd, n):
        data = self.pipes.get(fd, b"")
        if not data:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.pipes[fd] = b""
        return data

    def sigmask(self, how, mask):
        return ()

    def monotonic(self):
        return self.now

    def time(self):
        return 1.7e9 + self.now

    def sleep(self, seconds):
        self.now += seconds

    def cpu_count(self):
        return self.cpus

    def set_title(self, title):
        self.titles.append(title)

    def open_listener(self, host, port, group=0):
        lsock = FakeListener(next(self._fds), host, port or 40000 + len(self.listeners), self)
        self.listeners.append(lsock)
        self.groups.append(group)      # the sockets per listener asked for (affinity cpu)
        return lsock

    def pipe(self, nonblocking_read=False, size=0):
        r, w = next(self._fds), next(self._fds)
        self.pipes[r] = b""
        return r, w

    def reap(self):
        return self.ended.popleft() if self.ended else None

    def poller(self):
        self.poller_made = FakePoller(self)
        return self.poller_made

    def signals(self):
        self.sig = FakeSignals(next(self._fds))
        return self.sig

    def channel(self):
        self.channel_made = FakeChannel()
        return self.channel_made

    def freeze_heap(self):
        self.frozen += 1

    def rehearse(self):
        self.rehearsed += 1
        return 0

    def inherited_sockets(self):
        return list(self.inherited)

    def notifier(self):
        return self.notifier_made

    # --- what the test plays
    def readable(self, fd):
        if self.sig is not None and fd == self.sig.r:
            return bool(self.sig.pending)
        if self.pipes.get(fd):
            return True
        return any(l.fd == fd and l.queue for l in self.listeners)

    def signal(self, sig):
        self.sig.pending.append(sig)

    def say(self, fd, line):
        """A line on the pipe whose read end is ``fd`` (the status pipe)."""
        self.pipes[fd] = self.pipes.get(fd, b"") + line

    def exit(self, pid, code=0):
        """Process ``pid`` ends; SIGCHLD wakes the master, as it would."""
        self.ended.append((pid, code))
        self.signal(signal.SIGCHLD)

    def killed_with(self, sig):
        return [pid for pid, s in self.killed if s == sig]
