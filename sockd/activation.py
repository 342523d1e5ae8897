"""Socket activation: the listening sockets systemd (or
systemd-socket-activate, or any manager speaking the same protocol)
opened for sockd and handed over at exec.

The protocol is sd_listen_fds(3)'s: LISTEN_FDS sockets from descriptor 3
on, meant for the process LISTEN_PID names, with LISTEN_FDNAMES their names
(colon-separated; FileDescriptorName= in the .socket unit, the unit's name
by default).  The variables are read once and unset (the processes sockd
starts must not take the sockets for theirs), and the descriptors are made
close-on-exec.

Owns ``Inherited`` (one such socket: its descriptor, name and address) and
``inherited_sockets``, which reads them.  How they join the ``listen``
lines is listeners.open_listeners'.  Must not import the master.
"""

import os
import socket

from .errors import Halt
from .relay import set_socket_options

FIRST_FD = 3              # SD_LISTEN_FDS_START
ENVIRONMENT = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class Inherited:
    """One listening socket inherited at exec: ``sock`` (non-blocking, as
    sockd's own listeners are), ``fd``, ``name`` (LISTEN_FDNAMES' entry,
    "unknown" when none was given, as sd_listen_fds_with_names says) and
    ``address`` (its getsockname(), for matching ``listen`` lines)."""

    def __init__(self, sock, fd, name):
        self.sock, self.fd, self.name = sock, fd, name
        self.address = sock.getsockname()

    def describe(self):
        return "from systemd: fd %d, %s" % (self.fd, self.name)


def listen_fds(environ, pid):
    """[(fd, name)] that ``environ`` hands to process ``pid``, sd_listen_fds'
    way: none unless LISTEN_PID is ``pid`` and LISTEN_FDS a positive
    number.  Pure: reads ``environ`` only."""
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return []
        n = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if n <= 0:
        return []
    names = environ.get("LISTEN_FDNAMES", "")
    names = names.split(":") if names else []
    return [(FIRST_FD + i, names[i] if i < len(names) and names[i] else "unknown") for i in range(n)]


def inherited_sockets(environ=None, pid=None):
    """The inherited listening sockets, as Inherited, in descriptor order;
    [] when there are none.  LISTEN_* are removed from ``environ``
    (os.environ by default) either way.  Raises Halt when a descriptor is
    not a listening TCP socket (sockd serves SOCKS over TCP only)."""
    env = os.environ if environ is None else environ
    fds = listen_fds(env, os.getpid() if pid is None else pid)
    for name in ENVIRONMENT:
        env.pop(name, None)
    out = []
    for fd, name in fds:
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise Halt("descriptor %d from systemd (LISTEN_FDS): %s" % (fd, exc.strerror)) from None
        why = not_a_tcp_listener(sock)
        if why:
            sock.detach()
            raise Halt("descriptor %d from systemd (LISTEN_FDS, %s) is %s; sockd serves SOCKS on "
                       "listening TCP sockets only (ListenStream= in the .socket unit, Accept=no)" % (fd, name, why))
        sock.setblocking(False)
        # accepted sockets inherit these, as with sockd's own listeners
        set_socket_options(sock)
        out.append(Inherited(sock, fd, name))
    return out


def not_a_tcp_listener(sock):
    """Why ``sock`` cannot be served, or "" when it is a listening TCP
    socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return "not an IPv4 or IPv6 socket"
    if sock.type != socket.SOCK_STREAM:
        return "not a stream socket"
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return "not listening (a connection: Accept=yes?)"
    except OSError as exc:
        return "not usable (%s)" % exc.strerror
    return ""
