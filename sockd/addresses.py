"""Addresses and names as sockd shows and looks them up: the text of an
address, the service name of a port, and the blocking resolver calls that
the helper threads run.

Small on purpose and importing nothing of sockd, so that the session, BIND,
UDP, the shell hooks, the tools and the client library all share one copy.
``resolve``, ``reverse_names`` and ``lookup_names`` block: call them off
the poll loop (loop.executor).
"""

import ipaddress
import os
import socket

MAX_ADDRESSES = 8           # addresses of one name that a connect tries
_SERVICES = {}
_SERVICES_MAX = 70000
_LOADED = []                # [path] once load_services() has read the file


def literal_family(host):
    """AF_INET or AF_INET6 for an address literal, None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def addr_text(ip):
    """An address as logs show it: IPv4-mapped IPv6 as plain IPv4, no scope."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip.split("%", 1)[0]


def load_services(path="/etc/services"):
    """Read the tcp service names once (in the master, before forking: a
    fork-model child would otherwise read the file for every client).  After
    that, a port the file does not name is shown as its number without
    asking the C library, whose name-service lookup costs a fork-model child
    some 160 system calls for every client."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].endswith("/tcp"):
                    port = fields[1][:-4]
                    if port.isascii() and port.isdigit():
                        _SERVICES.setdefault(int(port), fields[0])
    except OSError:
        return
    _LOADED.append(path)


def service_name(port):
    """'telnet' for 23; the number as text when there is no name."""
    name = _SERVICES.get(port)
    if name is None and _LOADED:
        return str(port)
    if name is None:
        try:
            name = socket.getservbyport(port, "tcp")
        except (OSError, OverflowError, TypeError):
            name = str(port)
        if len(_SERVICES) < _SERVICES_MAX:
            _SERVICES[port] = name
    return name


def errno_text(err):
    """The system's words for an errno value."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError):
        return "error %s" % err


def resolve(host, port):
    """Blocking: the addresses of ``host`` as [(family, address text)], at
    most MAX_ADDRESSES, in the order the resolver prefers."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    out = []
    for fam, _, _, _, sa in infos:
        if fam in (socket.AF_INET, socket.AF_INET6) and (fam, sa[0]) not in out:
            out.append((fam, sa[0]))
        if len(out) >= MAX_ADDRESSES:
            break
    return out


def reverse_names(ip):
    """Blocking: the host names of ``ip``, double-checked forward (a name
    counts only when it resolves back to ``ip``), lower-case."""
    try:
        name, aliases, _ = socket.gethostbyaddr(ip)
    except OSError:
        return ()
    out = []
    for n in [name] + list(aliases):
        n = n.lower().rstrip(".")
        try:
            addrs = {addr_text(sa[0]) for *_, sa in socket.getaddrinfo(n, None)}
        except OSError:
            continue
        if ip in addrs and n not in out:
            out.append(n)
    return tuple(out)


def lookup_names(client_ip, dst_ip, want_src, want_dst):
    """Blocking: (names of the client, names of the destination), each only
    when wanted, for rules that name hosts."""
    return (reverse_names(client_ip) if want_src else (),
            reverse_names(dst_ip) if want_dst and dst_ip else ())
