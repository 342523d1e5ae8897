"""The listening sockets: opened from the configuration, kept across a
reload when the new file still wants them, and named for the log.

Owns nothing but sockets it hands back; the master keeps them.  Must not
import the master, the process models or the serving processes.
"""

import socket

from .errors import Halt
from .relay import set_socket_options


def open_listener(host, port, backlog=4096):
    """A bound, listening, non-blocking socket for (host, port).  Raises
    OSError or UnicodeError (a host name that cannot be encoded)."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    fam, _, _, _, sa = infos[0]
    s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # accepted sockets inherit these: three system calls fewer per client
        set_socket_options(s)
        s.bind(sa)
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def open_listeners(cfg, keep=None, opener=open_listener):
    """The listeners ``cfg`` asks for, keyed by (host, port, n) as written
    (the n-th line for that address), re-using the open sockets of ``keep``
    for the same keys; ``opener(host, port)`` opens a new one.
    Returns (listeners, added keys, dropped sockets) and closes nothing of
    ``keep``; raises Halt, having closed what it opened, when one cannot be
    opened."""
    keep = keep or {}
    out, added = {}, []
    seen = {}
    for host, port in cfg.listen:
        # the n-th "listen HOST:PORT" line: port 0 twice is two listeners
        n = seen[(host, port)] = seen.get((host, port), -1) + 1
        spec = (host, port, n)
        if spec in keep:
            out[spec] = keep[spec]
            continue
        try:
            out[spec] = opener(host, port)
            added.append(spec)
        except (OSError, UnicodeError) as exc:
            for k in added:
                out[k].close()
            raise Halt("cannot listen on %s: %s" % (fmt_hostport(host, port), getattr(exc, "strerror", None) or exc))
    dropped = [s for spec, s in keep.items() if spec not in out]
    return out, added, dropped


def fmt_hostport(host, port):
    """'host:port', with brackets around an IPv6 address."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def sock_name(s):
    """The address ``s`` is bound to, as the log shows it ('?' once closed)."""
    try:
        a = s.getsockname()
        return fmt_hostport(a[0], a[1])
    except OSError:
        return "?"
