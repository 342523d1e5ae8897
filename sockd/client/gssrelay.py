"""The plaintext side of a GSS-API protected connection (RFC 1961 levels 1
and 2): the program's socket is one end of a socketpair, and a small relay
seals what the program writes into mtyp 3 frames towards the SOCKS server
and opens the server's frames into what the program reads -- the helper
Dante's client keeps for the same purpose.

``Splice`` is the relay's state, pure: both directions' buffers (bounded),
the half-closes to pass on, and what to wait for next.  ``Relay`` is the
edge: one daemon thread per connection, waiting with poll on its two
non-blocking sockets, that ends -- closing both -- when both directions
have ended, or at once when either side fails (a reset, a token that does
not unwrap, the program closing its socket while the server still sends).

A process that exits while a relay still holds what its program wrote
would lose it (the thread is a daemon: it must not keep the program
alive); at exit each relay is given up to LINGER seconds in all to pass
on what is still in its socketpair.  A child made by fork() has no relay
threads: it closes its copies of the relays' own descriptors, so that a
relay's close still reaches the server; the program's ends it inherits
keep working through the parent's relays while the parent lives.
"""

import atexit
import errno
import logging
import os
import select
import socket
import threading
import time

from ..protocol import ProtocolError

log = logging.getLogger("sockd.client")

LIMIT = 256 * 1024         # buffered per direction before its reading pauses
NET_READ = 256 * 1024      # one read from the server (frames are buffered partly)
LINGER = 5.0               # at exit: the longest the relays are waited for, in all
SOFT_ERRORS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
IN, OUT = select.POLLIN, select.POLLOUT
HUP = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Splice:
    """Both directions of one protected connection.  ``prot`` is the
    gss1961.Protection; ``early``, plaintext the server sent with its
    reply.  The caller reads and writes, and tells: ``from_app``,
    ``from_net`` (b"" for end of file), ``sent_app``, ``sent_net``; it asks
    ``want_*``, ``shut_app_now``/``shut_net_now`` (pass a half-close on)
    and ``done``.  Raises ProtocolError for frames that do not open, or a
    server that ends inside a frame."""

    __slots__ = ("prot", "to_app", "to_net", "app_eof", "net_eof", "app_shut", "net_shut",
                 "bytes_in", "bytes_out")

    def __init__(self, prot, early=b""):
        self.prot = prot
        self.to_app = bytearray(early)      # plaintext waiting for the program
        self.to_net = bytearray()           # frames waiting for the server
        self.app_eof = self.net_eof = False  # that side's end of file was read
        self.app_shut = self.net_shut = False  # the half-close was passed on to that side
        self.bytes_in = len(early)          # plaintext, each way
        self.bytes_out = 0

    # -- what to wait for --
    def want_read_app(self):
        return not self.app_eof and len(self.to_net) < LIMIT

    def want_read_net(self):
        return not self.net_eof and len(self.to_app) < LIMIT

    def want_write_app(self):
        return bool(self.to_app) and not self.app_shut

    def want_write_net(self):
        return bool(self.to_net) and not self.net_shut

    @property
    def app_read_size(self):
        """How much plaintext to take from the program at once: one token's worth."""
        return self.prot.chunk

    # -- what happened --
    def from_app(self, data):
        if not data:
            self.app_eof = True
            return
        self.bytes_out += len(data)
        self.to_net += self.prot.seal(data)

    def from_net(self, data):
        if not data:
            self.net_eof = True
            if self.prot.pending:
                raise ProtocolError("the SOCKS server closed the connection inside a GSS-API frame")
            return
        plain = self.prot.feed(data)
        self.bytes_in += len(plain)
        self.to_app += plain

    def sent_app(self, n):
        del self.to_app[:n]

    def sent_net(self, n):
        del self.to_net[:n]

    # -- half-closes and the end --
    def shut_net_now(self):
        """True once: the program's end of file is to go to the server now."""
        if self.app_eof and not self.to_net and not self.net_shut:
            self.net_shut = True
            return True
        return False

    def shut_app_now(self):
        """True once: the server's end of file is to go to the program now."""
        if self.net_eof and not self.to_app and not self.app_shut:
            self.app_shut = True
            return True
        return False

    def done(self):
        return self.app_shut and self.net_shut

    def app_hangup(self):
        """The program's end is closed for good (poll's HUP): what waits
        for it is dropped, nothing more goes its way."""
        self.to_app.clear()
        self.app_shut = True

    def net_hangup(self):
        """The server's connection is closed both ways (HUP: its FIN after
        ours, or a reset): nothing more can be sent to it."""
        self.to_net.clear()
        self.net_shut = True


class _Registry:
    """The live relays of this process, for the exit and for fork()."""

    def __init__(self):
        self.lock = threading.Lock()
        self.relays = set()
        self.pid = os.getpid()

    def add(self, relay):
        with self.lock:
            self.relays.add(relay)

    def remove(self, relay):
        with self.lock:
            self.relays.discard(relay)

    def live(self):
        with self.lock:
            return list(self.relays) if self.pid == os.getpid() else []

    def after_fork_in_child(self):
        # the threads did not come along: the descriptors they own must not
        # stay open here (the server would never see their close)
        self.lock = threading.Lock()
        relays, self.relays, self.pid = self.relays, set(), os.getpid()
        for r in relays:
            r.forget()


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.after_fork_in_child)


class Relay:
    """One protected connection's relay thread, between ``app`` (our end
    of the program's socketpair) and ``net`` (the connection to the SOCKS
    server), through a Splice.  ``start()`` runs it; it closes both
    sockets when it ends."""

    def __init__(self, app, net, prot, early=b"", name="server"):
        self.app, self.net = app, net
        self.splice = Splice(prot, early)
        self.name = name
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.draining = None        # at exit: the deadline to pass on what is left
        self.error = None           # why it ended early, if it did
        self.closed = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name="sockd-gss-relay", daemon=True)

    def start(self):
        self.app.setblocking(False)
        self.net.setblocking(False)
        _registry.add(self)
        self.thread.start()

    # -- the thread --
    def run(self):
        try:
            self.loop()
        except ProtocolError as exc:
            self.error = str(exc)
            log.warning("GSS-API protected connection with %s ended: %s", self.name, exc)
        except OSError as exc:
            self.error = exc.strerror or str(exc)
        finally:
            self.close()

    def loop(self):
        sp, app, net = self.splice, self.app, self.net
        afd, nfd = app.fileno(), net.fileno()
        poller = select.poll()
        poller.register(self.wake_r, IN)
        events = {afd: None, nfd: None}      # what each is registered for (None: not at all)
        hup = set()
        while not sp.done():
            if sp.shut_net_now():
                self.shutdown(net)
                continue
            if sp.shut_app_now():
                self.shutdown(app)
                continue
            if self.draining is not None and (self.drained() or time.monotonic() >= self.draining):
                return
            for fd, want_in, want_out in ((afd, sp.want_read_app(), sp.want_write_app()),
                                          (nfd, sp.want_read_net(), sp.want_write_net())):
                ev = (IN if want_in else 0) | (OUT if want_out else 0)
                if fd in hup and not ev:
                    ev = None       # a hung-up socket is always ready: only wanted reads may wake us
                if ev != events[fd]:
                    if ev is None:
                        poller.unregister(fd)
                    elif events[fd] is None:
                        poller.register(fd, ev)
                    else:
                        poller.modify(fd, ev)
                    events[fd] = ev
            timeout = None
            if self.draining is not None:
                timeout = max(0, int((self.draining - time.monotonic()) * 1000) + 1)
            for fd, ev in poller.poll(timeout):
                if fd == self.wake_r:
                    self.on_wake()
                    continue
                if ev & HUP:
                    hup.add(fd)
                if fd == nfd:
                    self.on_net(ev)
                else:
                    self.on_app(ev)

    def on_app(self, ev):
        sp = self.splice
        if ev & OUT and sp.want_write_app():
            n = self.send(self.app, sp.to_app)
            if n is None:
                # the program closed its socket while the server still sends:
                # nothing more can be delivered; the whole connection ends
                raise OSError(errno.EPIPE, "the program closed its socket")
            sp.sent_app(n)
        if ev & (IN | HUP) and sp.want_read_app():
            data = self.recv(self.app, sp.app_read_size)
            if data is not None:
                sp.from_app(data)
        if ev & select.POLLHUP and not sp.app_shut:
            # closed for good, not merely shut down for writing: it will
            # read nothing more (what it wrote is still read and passed on)
            sp.app_hangup()

    def on_net(self, ev):
        sp = self.splice
        if ev & OUT and sp.want_write_net():
            n = self.send(self.net, sp.to_net)
            if n is None:
                raise OSError(errno.EPIPE, "the SOCKS server closed the connection")
            sp.sent_net(n)
        if ev & (IN | HUP) and sp.want_read_net():
            data = self.recv(self.net, NET_READ)
            if data is not None:
                sp.from_net(data)
        if ev & select.POLLHUP and not sp.net_shut:
            sp.net_hangup()

    @staticmethod
    def shutdown(sock):
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise

    def on_wake(self):
        try:
            os.read(self.wake_r, 64)
        except OSError:
            pass

    @staticmethod
    def recv(sock, n):
        """What ``sock`` holds (b"" at end of file), None when nothing yet."""
        try:
            return sock.recv(n)
        except OSError as exc:
            if exc.errno in SOFT_ERRORS:
                return None
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                return b""
            raise

    @staticmethod
    def send(sock, buf):
        """Bytes of ``buf`` sent (0 when none fit), None when the peer is gone."""
        try:
            return sock.send(buf, socket.MSG_NOSIGNAL)
        except OSError as exc:
            if exc.errno in SOFT_ERRORS:
                return 0
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                return None
            raise

    def drained(self):
        """At exit: has everything the program wrote gone to the server?"""
        sp = self.splice
        if sp.to_net:
            return False
        if sp.app_eof:
            return True
        p = select.poll()
        p.register(self.app.fileno(), IN)
        return not p.poll(0)

    # -- from other threads --
    def wake(self):
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def drain(self, deadline):
        self.draining = deadline
        self.wake()

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        _registry.remove(self)
        for s in (self.app, self.net):
            try:
                # reaches the peer even while a forked child holds a copy
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def forget(self):
        """In a forked child: close this process's copies, touch nothing else."""
        self.closed = True
        for s in (self.app, self.net):
            try:
                s.close()
            except OSError:
                pass
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def start(net, prot, early=b"", name="server"):
    """A socketpair whose other end the program is to use as its socket,
    and a running Relay between this end and ``net``.  Returns the
    program's end (a plain socket; the caller dup2()s it where it wants
    it and closes this object)."""
    app, program = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = Relay(app, net, prot, early, name)
    relay.start()
    return program, relay


def _at_exit():
    relays = _registry.live()
    if not relays:
        return
    deadline = time.monotonic() + LINGER
    for r in relays:
        r.drain(deadline)
    for r in relays:
        r.thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_at_exit)
