"""Logging: syslog as ``sockd[PID]`` (RFC 3164 over the local socket), and a
copy on stderr when running in the foreground.

Written by hand rather than with the syslog module because the socket path
must be configurable (tests and chroots point it elsewhere) and because a
slow syslog daemon must never stall a worker: datagrams are sent with
MSG_DONTWAIT and counted as dropped when the socket is full.  Every message
is cut to printable ASCII here, whatever the caller put in it.

A threads-model worker logs two lines for every client; there the copy on
stderr is batched (``batch_stderr``): the lines of one turn of its poll
loop go out in one write at the end of the turn (``flush``), cut at line
boundaries into writes of at most PIPE_BUF bytes, so that lines of
different processes never interleave.  The lines are the same; a worker
killed by SIGKILL loses at most the copies of its last turn (syslog has
them).

Imports only ``validators`` (the facility names) of sockd: every module may
log, so this one must not import any that logs.
"""

import os
import socket
import threading
import time

from .validators import FACILITIES

EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)
LEVEL_NAMES = {ERR: "error", WARNING: "warning", NOTICE: "notice", INFO: "info", DEBUG: "debug"}

_SAFE = bytes(c if 32 <= c < 127 else ord("?") for c in range(256))
PIPE_BUF = 4096         # a write of at most this many bytes to a pipe is never interleaved


def clean(text, limit=2048):
    """Printable ASCII only (no newline can ever split a log line)."""
    if isinstance(text, str) and len(text) <= limit and text.isascii() and text.isprintable():
        return text
    if not isinstance(text, bytes):
        text = text.encode("utf-8", "replace")
    return text[:limit].translate(_SAFE).decode("ascii")


class Logger:
    def __init__(self, ident="sockd", facility="daemon", socket_path="/dev/log", stderr=False, debug=0,
                 at_fork=True):
        """``socket_path`` None: no syslog at all (with ``stderr`` False, a
        logger that formats its lines and writes them nowhere: the fork
        model's rehearsal).  ``at_fork`` False: no hook in every child (a
        logger that no child uses)."""
        self.ident = ident
        self.facility = FACILITIES.get(facility, 3)
        self.socket_path = socket_path
        self.stderr = stderr
        self.debug_level = debug
        self.dropped = 0
        self._sock = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self._stamp_at = -1
        self._head = ""             # "STAMP IDENT[PID]: ", rebuilt once a second
        self.batch = None           # stderr lines waiting for flush(), when batching
        if socket_path is None:
            self._retry_at = float("inf")
        if at_fork:
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self):
        """A new process: its own pid, its own syslog socket, no batch (the
        parent writes its own)."""
        self.pid = os.getpid()
        self._stamp_at = -1
        self.batch = None
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._retry_at = 0.0

    def configure(self, facility=None, socket_path=None):
        if facility is not None:
            self.facility = FACILITIES.get(facility, self.facility)
        if socket_path is not None and socket_path != self.socket_path:
            self.socket_path = socket_path
            self.reopen()

    def reopen(self):
        """Forget the syslog socket (after a fork, a reload or a chroot)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._retry_at = 0.0
            self.pid = os.getpid()
            self._stamp_at = -1

    def batch_stderr(self):
        """From now on the stderr copies wait for ``flush()`` (a worker's
        poll loop calls it at the end of every turn)."""
        if self.batch is None:
            self.batch = []

    def flush(self):
        """Write the batched stderr lines: one write per PIPE_BUF bytes of
        whole lines (a longer line alone)."""
        if not self.batch:
            return
        with self._lock:
            lines, self.batch = self.batch, []
        chunk, size = [], 0
        for line in lines:
            if size + len(line) > PIPE_BUF and chunk:
                self._write_stderr(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._write_stderr(b"".join(chunk))

    @staticmethod
    def _write_stderr(data):
        while data:
            try:
                n = os.write(2, data)
            except InterruptedError:
                continue
            except OSError:
                return
            data = data[n:]

    def _connect(self):
        now = time.monotonic()
        if now < self._retry_at:
            return None
        try:
            # may fail too: out of descriptors is exactly when logging matters
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            self._retry_at = now + 1.0
            return None
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            self._retry_at = now + 5.0
            return None
        self._sock = s
        return s

    def log(self, level, message):
        if level == DEBUG and not self.debug_level:
            return
        msg = clean(message)
        now = int(time.time())
        if now != self._stamp_at:
            self._stamp_at = now
            self._head = "%s %s[%d]: " % (time.strftime("%b %e %H:%M:%S", time.localtime(now)), self.ident,
                                          self.pid)
        line = (self._head + msg).encode()          # once, for both copies
        direct = self.stderr and self.batch is None
        if direct:
            try:
                os.write(2, line + b"\n")
            except OSError:
                pass
        # one hold of the lock for the batched copy (flush() takes the list
        # under it) and the syslog socket
        with self._lock:
            if self.stderr and not direct:
                self.batch.append(line + b"\n")
            s = self._sock
            # no socket (none at all in a container without /dev/log): try
            # again only once the retry is due, without a call per line
            if s is None:
                if time.monotonic() < self._retry_at:
                    return
                s = self._connect()
                if s is None:
                    return
            data = b"<%d>%s" % (self.facility * 8 + level, line)
            try:
                s.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.dropped += 1
            except OSError:
                s.close()
                self._sock = None
                try:
                    s = self._connect()
                    if s is not None:
                        s.send(data, socket.MSG_DONTWAIT)
                except OSError:
                    self.dropped += 1

    def error(self, msg):
        self.log(ERR, msg)

    def warning(self, msg):
        self.log(WARNING, msg)

    def notice(self, msg):
        self.log(NOTICE, msg)

    def info(self, msg):
        self.log(INFO, msg)

    def debug(self, msg):
        self.log(DEBUG, msg)


log = Logger()
