"""The listening sockets: opened from the configuration, kept across a
reload when the new file still wants them, joined by those inherited from
systemd (socket activation, activation.py), and named for the log.

Owns nothing but sockets it hands back; the master keeps them.  Must not
import the master, the process models or the serving processes.
"""

import array
import ipaddress
import socket
import struct

from . import steering
from .config import open_proxy_lines
from .errors import Halt
from .relay import set_socket_options
from .validators import INHERITED, is_inherited, listen_text


class Steered(socket.socket):
    """A listener opened for ``affinity cpu`` (steering.py): itself the
    group's first socket (CPU 0's), ``siblings`` the others in CPU order.
    The master keeps, passes on and closes it as one listener; closing it
    closes the group."""

    def close(self):
        for s in self.__dict__.pop("siblings", ()):
            s.close()
        super().close()


def members(lsock):
    """Every socket of listener ``lsock``: itself, then a group's siblings
    (index i is CPU i's)."""
    return [lsock] + getattr(lsock, "siblings", [])


def open_listener(host, port, backlog=4096, group=0):
    """A bound, listening, non-blocking socket for (host, port); with
    ``group`` > 1, a Steered listener of that many sockets when the kernel
    allows one (a plain listener otherwise).  Raises OSError or
    UnicodeError (a host name that cannot be encoded)."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    fam, _, _, _, sa = infos[0]
    if group > 1:
        # a port in use must still say so: with SO_REUSEPORT a second sockd
        # of the same user would join the first's group instead of failing
        probe = listening_socket(fam, sa, 0, socket.socket)
        probe.close()
        try:
            return open_group(fam, sa, backlog, group)
        except OSError:
            pass                      # no SO_REUSEPORT or no program: one shared socket
    return listening_socket(fam, sa, backlog, socket.socket)


def listening_socket(fam, sa, backlog, kind, reuseport=False):
    s = kind(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # accepted sockets inherit these: three system calls fewer per client
        set_socket_options(s)
        s.bind(sa)
        if backlog:
            s.listen(backlog)
            s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def open_group(fam, sa, backlog, size):
    """A Steered listener of ``size`` sockets on ``sa``, the group's program
    attached.  Raises OSError, having closed what it opened."""
    first = listening_socket(fam, sa, backlog, Steered, reuseport=True)
    first.siblings = []
    try:
        bound = first.getsockname()   # port 0: the siblings take the port it got
        for _ in range(size - 1):
            first.siblings.append(listening_socket(fam, bound, backlog, socket.socket, reuseport=True))
        attach_program(first, steering.PROGRAM, steering.PROGRAM_LEN)
    except OSError:
        first.close()
        raise
    return first


def group_for(cfg, cpus):
    """The sockets per listener that ``cfg`` asks for: one per CPU with
    ``affinity cpu`` in the threads model, else 0 (one shared socket)."""
    if cfg.affinity == "cpu" and cfg.model == "threads":
        return steering.group_size(cpus)
    return 0


def opener_for(cfg, open_one, cpus):
    """open_listeners' ``opener`` for ``cfg``: ``open_one(host, port,
    group=...)`` (the OS facade's open_listener) with its group size."""
    group = group_for(cfg, cpus)
    return lambda host, port: open_one(host, port, group=group)


def listening_line(lsock, cfg):
    """The log's line for a listener sockd has opened."""
    n = len(members(lsock))
    return "listening on %s (%s model%s)" % (sock_name(lsock), cfg.model,
                                            ", a socket per CPU: %d" % n if n > 1 else "")


def affinity_warnings(cfg, listeners):
    """What the log says of ``affinity cpu`` where it cannot steer: a
    listener that is one shared socket (inherited, opened before the file
    asked for it, or refused SO_REUSEPORT by the kernel) is still served,
    by every worker, from one queue."""
    if cfg.affinity != "cpu":
        return []
    if cfg.model != "threads":
        return ["affinity cpu: the %s model has no workers to pin; ignored" % cfg.model]
    return ["affinity cpu: %s is one shared socket (inherited, opened before affinity cpu was set, or "
            "SO_REUSEPORT refused): its clients are not steered by CPU" % sock_name(s)
            for s in listeners.values() if len(members(s)) == 1]


def attach_program(sock, program, length):
    """SO_ATTACH_REUSEPORT_CBPF: struct sock_fprog {u16 len; struct
    sock_filter *filter}, the filter in an array whose address it takes."""
    code = array.array("B", program)
    fprog = struct.pack("@HP", length, code.buffer_info()[0])
    sock.setsockopt(socket.SOL_SOCKET, steering.SO_ATTACH_REUSEPORT_CBPF, fprog)


def open_listeners(cfg, keep=None, opener=open_listener, inherited=()):
    """The listeners ``cfg`` asks for, keyed by (host, port, n) as written
    (the n-th line for that address), re-using the open sockets of ``keep``
    for the same keys; ``opener(host, port)`` opens a new one.

    ``inherited`` (activation.Inherited: socket activation) are all served,
    whatever the file says, and never opened or closed here:

    * a ``listen systemd[:NAME]`` line takes those (of that name) that no
      earlier line took, keyed (INHERITED, NAME, n, fd); taking none is an
      error (a file that says so wants them);
    * an address line takes the inherited socket bound to its address
      rather than binding a second one;
    * the others are keyed (INHERITED, name, None, fd);
    * with inherited sockets and no ``listen`` line at all, the default
      address is not opened: the inherited sockets are the listeners.

    The first three items of a key are the line's (``cfg.listen_proxy``'s
    key).  Returns (listeners, added keys, dropped sockets): ``added`` names
    only the sockets opened here (a reload given up closes those),
    ``dropped`` the sockets of ``keep`` no longer wanted (never an
    inherited one).  Closes nothing of ``keep``; raises Halt, having closed
    what it opened, when one cannot be opened."""
    keep = keep or {}
    out, added = {}, []
    seen = {}
    free = list(inherited)
    lines = cfg.listen if ("listen" in cfg.line_of or not inherited) else []
    for host, port in lines:
        # the n-th "listen HOST:PORT" line: port 0 twice is two listeners
        n = seen[(host, port)] = seen.get((host, port), -1) + 1
        spec = (host, port, n)
        if is_inherited((host, port)):
            mine = [i for i in free if not port or i.name == port]
            if not mine:
                close_added(out, added)
                raise Halt("listen %s: %s" % (listen_text((host, port)), "no such socket was inherited from "
                           "systemd (LISTEN_FDS, LISTEN_FDNAMES)" if inherited else
                           "sockd was not started by socket activation (no LISTEN_FDS)"))
            for i in mine:
                free.remove(i)
                out[spec + (i.fd,)] = i.sock
            continue
        match = bound_to(free, host, port)
        if match is not None:
            free.remove(match)
            out[spec] = match.sock
            continue
        if spec in keep and not any(keep[spec] is i.sock for i in inherited):
            out[spec] = keep[spec]
            continue
        try:
            out[spec] = opener(host, port)
            added.append(spec)
        except (OSError, UnicodeError) as exc:
            close_added(out, added)
            raise Halt("cannot listen on %s: %s" % (fmt_hostport(host, port), getattr(exc, "strerror", None) or exc))
    for i in free:
        out[(INHERITED, i.name, None, i.fd)] = i.sock
    used = set(map(id, out.values()))
    dropped = [s for s in keep.values() if id(s) not in used and not any(s is i.sock for i in inherited)]
    return out, added, dropped


def close_added(out, added):
    for k in added:
        out[k].close()


def bound_to(inherited, host, port):
    """The one of ``inherited`` bound to (host, port), or None (port 0, or
    a name that does not resolve: the bind that follows says why)."""
    if not inherited or not port:
        return None
    try:
        want = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4]
    except (OSError, UnicodeError):
        return None
    for i in inherited:
        if len(i.address) == len(want) and i.address[:2] == want[:2]:
            return i
    return None


def inherited_of(listeners, inherited):
    """{key: Inherited} for the inherited sockets among ``listeners`` (the
    master's log names where each came from)."""
    by_sock = {id(i.sock): i for i in inherited}
    return {k: by_sock[id(s)] for k, s in listeners.items() if id(s) in by_sock}


def inherited_warnings(cfg, listeners, inherited):
    """The open-proxy warnings (config.open_proxy_lines) for the inherited
    sockets among ``listeners`` that are not on loopback and take no PROXY
    protocol: the parser could not know their addresses."""
    public = []
    for key, i in inherited_of(listeners, inherited).items():
        if key[:3] in cfg.listen_proxy:
            continue
        try:
            if ipaddress.ip_address(i.address[0].split("%", 1)[0]).is_loopback:
                continue
        except ValueError:
            pass
        public.append(fmt_hostport(i.address[0], i.address[1]))
    return open_proxy_lines(cfg, public)


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
