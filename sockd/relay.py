"""The relay: bytes both ways between a client and its destination, with
half-close, byte counts and bounded buffers.

Driven by the worker's poll loop: once a session has connected (CONNECT)
or been connected to (BIND), its two sockets' events come straight here.
Data moves through one receive buffer shared by every relay of the process
(``Context.buf``); only what a slow receiver could not take yet is kept, at
most one buffer's worth per direction, and the sender is not read again
until that is gone, so TCP back-pressure reaches it.  An EOF from one side
is passed on as shutdown(SHUT_WR) once its data has been delivered; when
both directions are done, the relay ends its session.

What all the relays of a process keep in all is bounded by one ``Budget``
(``limit buffers``).  A relay reads at most what it could keep within the
budget (whatever one read leaves behind is kept); when little room is
left (under LEAN_BELOW) it moves data "lean" instead: it peeks at what
the sender has, sends what the receiver takes and then drops exactly that
much from the sender's socket (MSG_TRUNC: no copy), so the rest stays in
the kernel, on the sender's side, and nothing is kept.  A
receiver that takes nothing then pauses the sender (EPOLLIN off, EPOLLOUT
on the receiver, as for kept data) until it has room.  Every session goes
on at its receiver's pace, the idle timeout and half-closes work as
before, and a relay goes back to the usual way by itself as soon as the
total has fallen.  The cost on the usual path is one subtraction and one
comparison per event.

A plain or shaped relay (not a protected one: its bytes change on the way)
moves a direction that has passed SPLICE_AFTER bytes with splice(2)
through a pipe (``relay splice``, on by default), a shaped one no more
per splice than its meter allows: the kernel hands the sender's pages to
the receiver and the worker never copies them.  What the receiver does
not take stays in the pipe, which the direction keeps, counted in the
budget like kept bytes, until it has drained; empty pipes go back to the
process's pool (``Budget.pipes``).  A process out of descriptors copies
as before.

What it asks of its owner (the session): ``owner.close()`` when the relay
is over, and nothing else; the owner calls ``release()`` as it closes.  It knows nothing of SOCKS or rules.
"""

import fcntl
import os
import socket

from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from .protocol import ProtocolError

READS_PER_EVENT = 8          # full buffers moved per event before yielding to others
WAITING = b""                # pend_*: the receiver is full; the data is still in the sender's socket
LEAN_BELOW = 256 << 10       # less room than this in the budget: move data lean rather than in small reads
UNLIMITED = 1 << 62
PROTECTED_MIN_READ = 16 << 10  # a protected relay reads at least this much, even with the budget spent
# Wrapping costs CPU (AES and HMAC in the Kerberos library, ~5 ms a MiB here),
# and it runs on the loop: a protected relay moves at most this much per
# read and PROTECTED_READS reads per event, about 5 ms of crypto, before the
# loop serves the others again.
PROTECTED_READ = 256 << 10
PROTECTED_READS = 4
# Splicing (plain and shaped relays, not protected ones): a direction that
# has moved SPLICE_AFTER bytes the usual way moves the rest through a pipe
# with splice(2), so that the kernel hands the sender's pages on instead of
# copying every byte out to the buffer and back in (two copies per byte
# were 45 % of a worker's CPU on a 1 GiB stream; with splice the worker's
# CPU per GiB falls to a third, and client + target + worker together by a
# quarter to a third: docs/performance.md section 4).  Interactive sessions
# never get that far and pay nothing for it.  The pipes are the process's
# (Budget.pipes): a direction holds one only while its receiver has not
# taken what it spliced in.
SPLICE_AFTER = 64 << 10
MSG_PEEK, MSG_TRUNC = int(socket.MSG_PEEK), int(socket.MSG_TRUNC)     # ints: no enum arithmetic per read
PIPE_SIZE = 1 << 20         # asked for with F_SETPIPE_SZ (the default fs.pipe-max-size); 64 KiB when refused
SPARE_PIPES = 4              # empty pipes a process keeps for the next splice; more are closed
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class Budget:
    """What the relays of one process keep for receivers slower than their
    senders: ``held`` bytes now, at most ``cap`` (relays read no more than
    would fit, and move data lean when almost nothing does).  Shared by
    every relay of the process (``Context.budget``); single-threaded, like
    the loop.  ``splice``: whether relays move bulk through pipes
    (``relay splice``); ``pipes``: the process's empty ones; ``short``:
    the process is short of descriptors (drop_pipes until spare_again),
    so a pipe given back is closed instead of kept."""

    __slots__ = ("held", "cap", "splice", "pipes", "short")

    def __init__(self, cap=UNLIMITED, splice=True):
        self.held = 0
        self.cap = cap
        self.splice = splice    # relay splice: relays move bulk through pipes
        self.pipes = []         # empty Pipes for the next splice (at most SPARE_PIPES)
        self.short = False      # out of descriptors: no spares kept

    def take_pipe(self):
        """An empty Pipe, the pool's or a new one; None when the process is
        out of descriptors (the relay then copies, as without splicing)."""
        if self.pipes:
            return self.pipes.pop()
        try:
            return Pipe()
        except OSError:
            return None

    def drop_pipes(self):
        """Close the spare pipes, and every pipe given back until
        spare_again(): the process is short of descriptors and its clients
        need them more (a session that ends meanwhile would otherwise
        refill the pool with its pipes)."""
        self.short = True
        for pipe in self.pipes:
            pipe.close()
        self.pipes = []

    def spare_again(self):
        """Descriptors to spare again (the worker accepts again): the pool
        fills as bulk moves."""
        self.short = False

    def give_pipe(self, pipe):
        """``pipe`` is empty again: back to the pool, or closed."""
        if len(self.pipes) < SPARE_PIPES and not self.short:
            self.pipes.append(pipe)
        else:
            pipe.close()


class Pipe:
    """A pipe that spliced data passes through, and ``n``, the bytes in it
    now (what the receiver has not taken yet: kept data, like bytes in
    pend_*; ``len()`` says how much).  Non-blocking both ends; closed by
    close() or when dropped."""

    __slots__ = ("r", "w", "size", "n")

    def __init__(self):
        self.r = self.w = -1
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.n = 0
        try:
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            # over the user's pipe pages (fs.pipe-user-pages-soft) or the
            # system's largest pipe: the size it has
            self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def __len__(self):
        return self.n

    def close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1
        self.n = 0

    def __del__(self):
        self.close()


def set_socket_options(sock):
    """What every relayed TCP socket gets: no Nagle delay (replies and
    interactive traffic go out at once), urgent data inline (the classic
    SO_OOBINLINE), keep-alives (a dead peer is noticed).  Listeners get them
    too: accepted sockets inherit them."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


class Relay:
    """Both directions between ``c`` (the client) and ``r`` (the remote).

    ``n_cr``/``n_rc`` count the bytes from the client and from the remote;
    ``last`` is the loop time of the latest traffic (the idle timeout)."""

    __slots__ = ("owner", "loop", "buf", "mv", "budget", "c", "r", "cfd", "rfd", "cmask", "rmask",
                 "pend_cr", "pend_rc", "eof_c", "eof_r", "shut_c", "shut_r", "n_cr", "n_rc", "last", "error",
                 "splicing")
    paused = (False, False)     # a direction whose sender is not read now (traffic control: Shaping)
    settled = True              # only a pump changes what update() decides on (not so under Shaping)
    SPLICE = True               # bulk moves through pipes (not where the bytes change on the way)
    metered = False             # a meter decides how much each read may take (Shaping)

    def __init__(self, owner, loop, buf, mv, c, r, budget=None):
        """``buf``/``mv``: the process's receive buffer and a memoryview of
        it; ``budget``: the process's Budget (None: one of its own, without
        a cap)."""
        self.owner = owner
        self.loop = loop
        self.buf, self.mv = buf, mv
        self.budget = budget if budget is not None else Budget()
        self.c, self.r = c, r
        self.cfd, self.rfd = c.fileno(), r.fileno()
        self.cmask = self.rmask = 0
        self.pend_cr = self.pend_rc = None
        self.eof_c = self.eof_r = self.shut_c = self.shut_r = False
        self.n_cr = self.n_rc = 0
        self.last = loop.now
        self.error = None       # why the relay ended, when the client broke its protocol
        self.splicing = self.SPLICE and self.budget.splice

    def start(self, cmask, rmask, early=b"", first=b""):
        """Take over both sockets' events.  ``cmask``/``rmask``: what each
        is registered for now (-1: not registered); ``early``: what the
        client sent before the relay began, for the remote; ``first``: what
        the remote sent before it began (behind an upstream proxy's reply),
        for the client."""
        loop = self.loop
        if cmask < 0:
            loop.add(self.cfd, 0, self.on_client)
            cmask = 0
        else:
            loop.rebind(self.cfd, self.on_client)
        if rmask < 0:
            loop.add(self.rfd, 0, self.on_remote)
            rmask = 0
        else:
            loop.rebind(self.rfd, self.on_remote)
        self.cmask, self.rmask = cmask, rmask
        if early:
            self.n_cr += len(early)
            try:
                sent = self.r.send(early)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.owner.close()
                return
            if sent < len(early):
                # already in memory (the session kept it): counted, even past the cap
                self.keep(0, early[sent:])
        if first:
            self.n_rc += len(first)
            data = self.outward(first)
            try:
                sent = self.c.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.owner.close()
                return
            if sent < len(data):
                self.keep(1, data[sent:])
        # No reads here: the poll loop reports whatever is already waiting.
        self.update()

    def outward(self, data):
        """What the remote sent, as the client is to receive it."""
        return data

    def on_client(self, ev):
        # The common event, data (or the EOF) from a sender being read: one
        # pump, and update() only when the pump changed what it looks at
        # (an EOF, data kept for the receiver).  Otherwise update() would
        # find the masks as they are: its result depends only on the
        # eof/pend/shut fields, which nothing else changes, and on
        # ``paused``, which the meters change under a shaped relay (not
        # ``settled``: it always goes the whole way).
        if ev == EPOLLIN and self.settled and self.cmask & EPOLLIN:
            if self.pump(0) and (self.eof_c or self.pend_cr is not None):
                self.update()
            return
        self.event(0, ev)

    def on_remote(self, ev):
        if ev == EPOLLIN and self.settled and self.rmask & EPOLLIN:
            if self.pump(1) and (self.eof_r or self.pend_rc is not None):
                self.update()
            return
        self.event(1, ev)

    def event(self, side, ev):
        """An event on the client (side 0) or remote (side 1) socket."""
        if ev & EPOLLOUT:
            if not self.flush(1 - side):
                return
        if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
            if (self.cmask if side == 0 else self.rmask) & EPOLLIN:
                if not self.pump(side):
                    return
            elif ev & EPOLLERR or (ev & EPOLLHUP and (self.pend_rc if side == 0 else self.pend_cr) is not None):
                self.owner.close()
                return
            elif ev & EPOLLHUP:
                # Hang-up on a socket we are not reading now (its data waits
                # for the other side to drain): stop hearing about it until
                # there is room again; update() registers it anew then.
                if side == 0:
                    self.loop.remove(self.cfd)
                    self.cmask = -1
                else:
                    self.loop.remove(self.rfd)
                    self.rmask = -1
        self.update()

    def pump(self, side):
        """Move what the socket on ``side`` has to the other one.  Returns
        False when the relay has ended (its owner closed)."""
        if side == 0:
            src, dst = self.c, self.r
            if self.pend_cr is not None:
                return True
        else:
            src, dst = self.r, self.c
            if self.pend_rc is not None:
                return True
        size = len(self.buf)
        budget = self.budget
        room = budget.cap - budget.held
        if room < size:
            # what one read may leave behind must fit in what is left
            if room < LEAN_BELOW:
                return self.pump_lean(side, src, dst)
            size = room
        if self.splicing and (self.n_cr if side == 0 else self.n_rc) >= SPLICE_AFTER:
            return self.pump_splice(side, src, dst, size)
        return self.pump_copy(side, src, dst, size, READS_PER_EVENT)

    def pump_copy(self, side, src, dst, size, reads):
        """``pump`` through the process's buffer: at most ``reads`` reads of
        at most ``size`` bytes, each sent on at once; what the receiver does
        not take is kept."""
        buf, mv = self.buf, self.mv
        for _ in range(reads):
            try:
                n = src.recv_into(buf, size)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.owner.close()
                return False
            if n == 0:
                if side == 0:
                    self.eof_c = True
                else:
                    self.eof_r = True
                return True
            self.last = self.loop.now
            if side == 0:
                self.n_cr += n
            else:
                self.n_rc += n
            try:
                m = dst.send(mv[:n])
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError:
                self.owner.close()
                return False
            if m < n:
                self.keep(side, bytes(mv[m:n]))
                return True
            if n < size:
                return True
        return True

    def pump_splice(self, side, src, dst, size):
        """``pump`` through a pipe: splice what the sender has into it, then
        out to the receiver; the bytes stay in the kernel's pages.  What the
        receiver does not take stays in the pipe, which the direction then
        keeps (pend_*, counted in the budget like kept bytes) until flush()
        has passed it on.  A splice that finds nothing, or an end, is
        checked with one ordinary read: TCP's urgent mark stops a splice
        (it never reads past it, not even with SO_OOBINLINE) where a read
        goes through, and at that mark after the peer's FIN a splice says 0
        as at the end."""
        budget = self.budget
        pipe = budget.take_pipe()
        if pipe is None:
            return self.pump_copy(side, src, dst, size, READS_PER_EVENT)
        if side == 0:
            sfd, dfd = self.cfd, self.rfd
        else:
            sfd, dfd = self.rfd, self.cfd
        if size > pipe.size:
            size = pipe.size
        splice = os.splice
        meter = self.meter if self.metered else None
        want = size
        for i in range(READS_PER_EVENT):
            if meter is not None:
                # a shaped relay splices no more than its meter allows, and
                # none while it waits (as MeteredSocket reads)
                allow = meter.allowance(side)
                if allow <= 0:
                    break
                want = size if allow > size else allow
            try:
                n = splice(sfd, pipe.w, want, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                budget.give_pipe(pipe)
                self.owner.close()
                return False
            if n == 0:
                budget.give_pipe(pipe)
                if i:
                    return True
                return self.pump_copy(side, src, dst, size, 1)
            if meter is not None:
                meter.spent(side, n)
            self.last = self.loop.now
            if side == 0:
                self.n_cr += n
            else:
                self.n_rc += n
            try:
                m = splice(pipe.r, dfd, n, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError:
                pipe.close()
                self.owner.close()
                return False
            if m < n:
                pipe.n = n - m
                self.keep(side, pipe)
                return True
            if n < want:
                break
        budget.give_pipe(pipe)
        return True

    def pump_lean(self, side, src, dst):
        """``pump`` when the process's budget is (nearly) used up: peek,
        send what the receiver takes, drop that much from the sender's
        socket; keep nothing.  A receiver that is full leaves
        WAITING in place of kept data."""
        buf, mv = self.buf, self.mv
        size = len(buf)
        for _ in range(READS_PER_EVENT):
            try:
                n = src.recv_into(buf, size, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.owner.close()
                return False
            if n == 0:
                if side == 0:
                    self.eof_c = True
                else:
                    self.eof_r = True
                return True
            try:
                m = dst.send(mv[:n])
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError:
                self.owner.close()
                return False
            if m:
                if not self.drop(src, m):
                    return False
                self.last = self.loop.now
                if side == 0:
                    self.n_cr += m
                else:
                    self.n_rc += m
            if m < n:
                if side == 0:
                    self.pend_cr = WAITING
                else:
                    self.pend_rc = WAITING
                return True
            if n < size:
                return True
        return True

    def drop(self, src, m):
        """Take ``m`` bytes that were peeked at (and sent) out of ``src``
        without copying them.  They are there: a peek saw them, and the
        urgent mark stops a peek where it stops a read.  Returns False when
        the relay has ended."""
        buf = self.buf
        while m > 0:
            try:
                k = src.recv_into(buf, m, socket.MSG_TRUNC)
            except InterruptedError:
                continue
            except OSError:
                k = 0
            if k <= 0:
                self.owner.close()
                return False
            m -= k
        return True

    def keep(self, side, data):
        """``data`` (bytes, or a Pipe holding them) waits for the receiver of
        the sender on ``side``: kept for that direction, counted in the
        budget."""
        if side == 0:
            self.pend_cr = data
        else:
            self.pend_rc = data
        self.budget.held += len(data)

    def flush(self, direction):
        """Send what is waiting for the receiver of ``direction`` (0:
        client->remote, 1: remote->client).  Returns False when the relay
        has ended."""
        if direction == 0:
            data, dst = self.pend_cr, self.r
        else:
            data, dst = self.pend_rc, self.c
        if data is None:
            return True
        if not data:
            # WAITING, lean: nothing kept; the receiver has room again, so the
            # sender's socket is read (peeked at) once more
            if direction == 0:
                self.pend_cr = None
            else:
                self.pend_rc = None
            return self.pump(direction)
        if type(data) is Pipe:
            return self.flush_pipe(direction, data)
        try:
            m = dst.send(data)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.owner.close()
            return False
        rest = data[m:] if m < len(data) else None
        if direction == 0:
            self.pend_cr = rest
        else:
            self.pend_rc = rest
        self.budget.held -= m
        if rest is None:
            self.last = self.loop.now
            # the sender may have more: read it now instead of waiting a round
            return self.pump(direction)
        return True

    def flush_pipe(self, direction, pipe):
        """``flush`` of what waits in a pipe (pump_splice kept it)."""
        try:
            m = os.splice(pipe.r, self.rfd if direction == 0 else self.cfd, pipe.n, flags=SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.owner.close()
            return False
        pipe.n -= m
        self.budget.held -= m
        if pipe.n:
            return True
        if direction == 0:
            self.pend_cr = None
        else:
            self.pend_rc = None
        self.budget.give_pipe(pipe)
        self.last = self.loop.now
        return self.pump(direction)

    def update(self):
        """Recompute what each socket waits for; pass half-closes on; end
        the session when both directions are done."""
        if self.eof_c and self.pend_cr is None and not self.shut_r:
            self.shut_r = True
            try:
                self.r.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.eof_r and self.pend_rc is None and not self.shut_c:
            self.shut_c = True
            try:
                self.c.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.shut_c and self.shut_r:
            self.owner.close()
            return
        paused = self.paused
        m = 0
        if not self.eof_c and self.pend_cr is None and not paused[0]:
            m = EPOLLIN
        if self.pend_rc is not None:
            m |= EPOLLOUT
        if m != self.cmask:
            self.set_mask(0, m)
        m = 0
        if not self.eof_r and self.pend_rc is None and not paused[1]:
            m = EPOLLIN
        if self.pend_cr is not None:
            m |= EPOLLOUT
        if m != self.rmask:
            self.set_mask(1, m)

    def set_mask(self, side, m):
        loop = self.loop
        if side == 0:
            fd, cur, handler = self.cfd, self.cmask, self.on_client
        else:
            fd, cur, handler = self.rfd, self.rmask, self.on_remote
        if cur == -1:
            if m == 0:
                return
            loop.add(fd, m, handler)
        elif (self.eof_c and self.shut_c) if side == 0 else (self.eof_r and self.shut_r):
            # both directions of this socket are done: nothing more to hear
            loop.remove(fd)
            m = -1
        else:
            loop.modify(fd, m)
        if side == 0:
            self.cmask = m
        else:
            self.rmask = m

    def close(self):
        """The loop's error handler: a bug met this relay; it ends with its
        session."""
        if self.owner is not None:
            self.owner.close()

    def release(self, sole=False):
        """Stop hearing both sockets and drop what waits (the session is
        closing; it closes the sockets itself).  ``sole``: the sockets are
        closed next and no other process holds them, so their close(2) ends
        their registrations (Loop.forget: two epoll_ctl fewer).  Lets go of
        the session too: the session keeps its relay for the counts, and a
        cycle between the two would wait for the garbage collector, which
        let a worker's memory grow by a third over 200,000 connections
        (make bench, steady state)."""
        drop = self.loop.forget if sole else self.loop.remove
        drop(self.cfd)
        drop(self.rfd)
        for data in (self.pend_cr, self.pend_rc):
            if data is not None:
                self.budget.held -= len(data)
                if type(data) is Pipe:
                    data.close()        # what it holds is dropped with it
        self.pend_cr = self.pend_rc = None
        self.owner = None


class ProtectedRelay(Relay):
    """A relay whose client side speaks RFC 1961 per-message protection
    (GSS-API levels 1 and 2): what the client sends is unwrapped
    (``prot.feed``, a partial frame kept until the rest arrives) before it
    goes to the remote, and what the remote sends is wrapped
    (``prot.seal``, in tokens of at most 65535 bytes) before it goes to the
    client.  The counts are of plaintext; ``prot`` counts the wire.  What
    it keeps for a slow receiver is bounded and counted as the plain relay's
    is; it never moves data lean (the bytes change on the way), but reads
    less, down to PROTECTED_MIN_READ, as the budget runs out; and it reads
    in smaller bites than the plain relay (PROTECTED_READ), so that one
    stream's crypto does not hold up the loop's other clients.  A frame that
    does not unwrap ends the relay (``error`` says why)."""

    __slots__ = ("prot",)
    SPLICE = False

    def __init__(self, owner, loop, buf, mv, c, r, budget, prot):
        super().__init__(owner, loop, buf, mv, c, r, budget)
        self.prot = prot

    def outward(self, data):
        return self.prot.seal(data)

    def pump(self, side):
        if side == 0:
            src, dst = self.c, self.r
            if self.pend_cr is not None:
                return True
        else:
            src, dst = self.r, self.c
            if self.pend_rc is not None:
                return True
        buf, mv, prot = self.buf, self.mv, self.prot
        size = min(len(buf), PROTECTED_READ)
        budget = self.budget
        room = budget.cap - budget.held
        if room < size:
            size = max(room, PROTECTED_MIN_READ)
        for _ in range(PROTECTED_READS):
            try:
                n = src.recv_into(buf, size)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.owner.close()
                return False
            if n == 0:
                if side == 0:
                    self.eof_c = True
                else:
                    self.eof_r = True
                return True
            self.last = self.loop.now
            if side == 0:
                try:
                    data = prot.feed(mv[:n])
                except ProtocolError as exc:
                    self.error = str(exc)
                    self.owner.close()
                    return False
                self.n_cr += len(data)
                if not data:
                    continue
            else:
                data = prot.seal(mv[:n])
                self.n_rc += n
            try:
                m = dst.send(data)
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError:
                self.owner.close()
                return False
            if m < len(data):
                self.keep(side, data[m:])
                return True
            if n < size:
                return True
        return True


# --- traffic control: shaping (a session under a limit, a quota or accounting) ---------------

class MeteredSocket:
    """A relayed socket as a shaped relay reads it: a read never takes more
    than the session's meter allows, and none while it waits -- the read
    "would block", as on an empty socket, so the pumps above need not know
    (they are the plain ones, not copies).  What is read is spent; a peek
    (the lean path) spends nothing, the drop after it what it drops.
    Everything else is the socket's."""

    __slots__ = ("sock", "meter", "d")

    def __init__(self, sock, meter, d):
        self.sock, self.meter, self.d = sock, meter, d

    def recv_into(self, buf, nbytes=0, flags=0):
        # the flags as ints (MSG_TRUNC, MSG_PEEK): ``0 & socket.MSG_PEEK``
        # goes through enum's IntFlag.__and__ and builds a member, about
        # 2 us a test, four reads a connection
        if flags & MSG_TRUNC:
            n = self.sock.recv_into(buf, nbytes, flags)
            self.meter.spent(self.d, n)
            return n
        allow = self.meter.allowance(self.d)
        if allow <= 0:
            raise BlockingIOError
        if nbytes == 0 or nbytes > allow:
            nbytes = min(allow, len(buf))
        n = self.sock.recv_into(buf, nbytes, flags)
        if not flags & MSG_PEEK:
            self.meter.spent(self.d, n)
        return n

    def send(self, data):
        return self.sock.send(data)

    def shutdown(self, how):
        self.sock.shutdown(how)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def __getattr__(self, name):
        return getattr(self.sock, name)


class Shaping:
    """What a relay under traffic control adds to the plain one (or to the
    protected one: ``ShapedRelay``, ``ShapedProtectedRelay``): its sockets
    are read through its session's meters.Meter (MeteredSocket), and a
    direction whose budget is spent is paused -- its sender is not read
    (EPOLLIN off), so TCP pushes back on it, and nothing more is kept than
    without a limit -- until a loop timer says its tokens are due; then it
    takes again.  It never spins: a paused direction has no EPOLLIN and one
    timer.  The idle timeout goes on counting from the last bytes moved,
    and an EOF is read as soon as the direction may read again.  A quota
    reached with ``cut`` ends the session at the next turn of the loop (not
    in the middle of a pump).  The subclasses' slots: ``meter``, ``timer``."""

    __slots__ = ()
    settled = False             # a read may pause a direction (the meter): update() after every event
    metered = True              # pump_splice asks the meter too

    def shape(self, meter):
        self.meter = meter
        self.paused = meter.paused
        self.timer = None
        meter.on_quota = self.quota_reached

    def start(self, cmask, rmask, early=b"", first=b""):
        # what came before the relay is counted, not charged: it is already read
        if early:
            self.meter.add(0, len(early))
        if first:
            self.meter.add(1, len(first))
        super().start(cmask, rmask, early, first)

    def update(self):
        """Relay.update (which leaves a paused direction's sender unread),
        and a timer for when it may be read again."""
        super().update()
        paused = self.paused
        if (paused[0] or paused[1]) and self.timer is None and self.owner is not None:
            due = self.meter.due
            when = min(due[d] for d in (0, 1) if paused[d])
            self.timer = self.loop.call_at(when, self.on_due)

    def on_due(self):
        """A paused direction's tokens are due: take them, read again."""
        self.timer = None
        if self.owner is None:
            return
        meter, now = self.meter, self.loop.now
        for d in (0, 1):
            if meter.paused[d] and meter.due[d] <= now + 0.0005:
                meter.retry(d)
        if self.owner is not None:
            self.update()

    def quota_reached(self):
        """A quota with ``cut`` is reached: end the session, at the next
        turn of the loop (the pump that noticed is still running)."""
        self.loop.call_later(0, self.cut)

    def cut(self):
        if self.owner is not None:
            self.owner.close()

    def release(self, sole=False):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.meter.on_quota = None
        self.meter.close()
        super().release(sole)


class ShapedRelay(Shaping, Relay):
    """A plain relay under traffic control (see Shaping)."""

    __slots__ = ("meter", "timer", "paused")

    def __init__(self, owner, loop, buf, mv, c, r, budget, meter):
        super().__init__(owner, loop, buf, mv, MeteredSocket(c, meter, 0), MeteredSocket(r, meter, 1), budget)
        self.shape(meter)


class ShapedProtectedRelay(Shaping, ProtectedRelay):
    """A protected relay (GSS-API levels 1 and 2) under traffic control:
    the client's side is metered as it is on the wire."""

    __slots__ = ("meter", "timer", "paused")

    def __init__(self, owner, loop, buf, mv, c, r, budget, prot, meter):
        super().__init__(owner, loop, buf, mv, MeteredSocket(c, meter, 0), MeteredSocket(r, meter, 1), budget,
                         prot)
        self.shape(meter)
