"""The fork model's rehearsal: the master serves a few made-up clients
itself, on loopback, before it forks its first child.

Why (docs/performance.md, section 3, "The rehearsal"): a fork-model child runs
each of its functions once or twice, in a copy of the master's pages.
CPython 3.11 and later rewrite a function's bytecode into its specialised,
faster form only after it has run several times ("quickening"); a function
the master never ran is cold in every child, which interprets the generic
bytecode and counts its calls towards a quickening it never reaches.  The
master never runs a session, so before this every child ran the whole of
its session cold.  Served here a few times, the session's code is already
specialised when the children inherit it: measured, 12 % less CPU per
connection in the fork model.

What the rehearsal is not allowed to do: touch anything of the real
server.  It has its own configuration (SETTINGS, not the administrator's:
no shell commands, no identd, no names to look up, no upstream proxies),
its own Loop and Context for each client, a logger that writes nowhere,
and no shared table (limits, back-off, health, traffic) and no metrics.
Its three sockets are on 127.0.0.1, made and closed here; a machine
without a loopback interface simply has no rehearsal.  It is bounded
(ROUNDS clients, DEADLINE seconds in all) and never raises: a child that
starts cold is only slower.
"""

import socket
import time

from .config import ConfigError, parse_text
from .log import Logger
from .loop import EPOLLIN, Loop
from .session import Context, Session

ROUNDS = 24               # clients served (half SOCKS 5, half SOCKS 4): each function runs 12-24 times
DEADLINE = 2.0            # seconds for all of them (measured: about 10 ms)
SETTINGS = "permit 127.0.0.0 255.0.0.0\n"
ANSWER = b"rehearsal"


def requests(port):
    """The two CONNECTs the made-up clients send to 127.0.0.1:``port``:
    SOCKS 5 (greeting and request together, as most clients send them) and
    SOCKS 4 with an empty user."""
    dst = socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
    v5 = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + dst
    v4 = b"\x04\x01" + dst[4:] + dst[:4] + b"\x00"
    return v5, v4


def rehearse(rounds=ROUNDS, deadline=DEADLINE):
    """Serve ``rounds`` made-up clients in this process; returns how many
    were served to the end.  Never raises."""
    try:
        cfg = parse_text(SETTINGS, "<rehearsal>")
    except ConfigError:
        return 0
    quiet = Logger(socket_path=None, at_fork=False)
    end = time.monotonic() + deadline
    done = 0
    try:
        with socket.socket() as lsock, socket.socket() as tsock:
            for s in (lsock, tsock):
                s.bind(("127.0.0.1", 0))
                s.listen(4)
            lsock.settimeout(deadline)
            tsock.setblocking(False)
            v5, v4 = requests(tsock.getsockname()[1])
            for i in range(rounds):
                if time.monotonic() >= end or not one_client(cfg, quiet, lsock, tsock, v4 if i & 1 else v5, end):
                    break
                done += 1
    except OSError:
        pass
    return done


def one_client(cfg, quiet, lsock, tsock, request, end):
    """One made-up client, as a fork-model child serves it: a Loop and a
    Context of its own, the Session, the loop until it has gone.  The
    client's and the destination's ends are handled in the same loop.
    True when it went to the end before ``end``."""
    loop = Loop()
    ctx = Context(cfg, loop, quiet, bufsize=1 << 16)
    c = s = None
    finished = []
    try:
        c = socket.create_connection(lsock.getsockname(), timeout=max(end - time.monotonic(), 0.01))
        s, peer = lsock.accept()
        c.setblocking(False)
        c.send(request)

        def on_destination(ev):
            try:
                t, _ = tsock.accept()
            except BlockingIOError:
                return
            with t:
                t.send(ANSWER)

        def on_client(ev):
            try:
                data = c.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove(c.fileno())
                c.close()
                finished.append(True)

        loop.add(tsock.fileno(), EPOLLIN, on_destination)
        loop.add(c.fileno(), EPOLLIN, on_client)
        loop.call_at(end, loop.stop)
        Session(ctx, s, peer, s.getsockname(), True, None, None)
        s = None                       # the session's now
        loop.run(until=lambda: finished and not ctx.sessions)
        return bool(finished) and not ctx.sessions
    except OSError:
        return False
    finally:
        for sess in list(ctx.sessions):
            sess.close()
        loop.remove(tsock.fileno())
        for x in (c, s):
            if x is not None:
                x.close()
        loop.close()
