"""socks.conf: which connections go direct, which through which sockd, and
which are refused.  The grammar and the decision are sockd.wayout's (the
same file tells sockd itself how to leave, as ``upstream FILE``); this
module is the client library's side: where the file is (SOCKS_CONF), the
servers and version the environment names, and reading the file (the only
I/O, in ``load``).  The grammar, in short:

The classic grammar (CSTC 4.2/4.3), one entry a line::

    deny   [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    direct [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    sockd  [@=serverlist] [*=userlist] dst_addr dst_mask [op port] [: shell command]
    sockd@server,...      [*=userlist] dst_addr dst_mask [op port] [: shell command]

The address, mask, port and user fields are read by the same code as the
server's rules (sockd.config / sockd.rules): CIDR, IPv6, host names,
``.zones`` and ``ALL`` work here too.  A server is ``host``, ``host:port``,
``[ipv6]:port`` or a bare IPv6 address.  First match wins; no match means
deny; no file at all means everything is direct (``load`` returns None);
127.0.0.1 and 0.0.0.0 (and ::1, ::) are always direct.  Every mistake is
reported as ``FILE:LINE: message (near 'token')``, all of them at once.
"""

import os
import socket

from .. import config as C
from ..wayout import (ACTIONS, ALWAYS_DIRECT, DEFAULT_PATH, DENY, DIRECT, MAX_LINE, SKIP_WORDS,  # noqa: F401
                      SOCKD, Decision, Entry, Server, SocksConf, decide, fmt_server, parse_entry,
                      parse_server, parse_servers, parse_text as parse_wayout, split_entry_line)
from ..wayout import WayoutError as ConfError


def default_port():
    """The port of ``socks`` in /etc/services, else 1080."""
    try:
        return socket.getservbyname("socks", "tcp")
    except OSError:
        return C.DEFAULT_PORT


def load(path, port=None):
    """Read and parse ``path``.  Returns None when there is no such file
    (every connection is then direct); raises ConfError for a file that
    cannot be read or holds mistakes."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 22)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfError([(path, 0, "cannot read: %s" % exc.strerror)]) from None
    return parse_text(data.decode("utf-8", "replace"), path, default_port() if port is None else port)


def parse_text(text, path="-", port=C.DEFAULT_PORT):
    """Parse socks.conf text for the client library: the way-out grammar,
    less what only sockd speaks (http:// upstreams).  Returns a SocksConf;
    raises ConfError with every problem."""
    conf = parse_wayout(text, path, port)
    problems = [(e.file, e.line, "the client library speaks SOCKS only: http:// upstreams are for sockd's "
                 "way-out file (upstream FILE in sockd.conf)") for e in conf.entries
                if any(s.kind == "http" for s in e.servers or ())]
    if problems:
        raise ConfError(problems)
    return conf


def conf_path(env=None):
    env = os.environ if env is None else env
    return env.get("SOCKS_CONF") or DEFAULT_PATH


def env_servers(env=None, port=None):
    """The default servers from SOCKS_SERVER (a server or a comma-separated
    list), or () when unset.  Raises ConfError naming the variable."""
    env = os.environ if env is None else env
    text = env.get("SOCKS_SERVER", "").strip()
    if not text:
        return ()
    try:
        return parse_servers(text, default_port() if port is None else port)
    except C.Bad as exc:
        msg = str(exc) + (" (near '%s')" % C.printable(exc.token) if exc.token else "")
        raise ConfError([("SOCKS_SERVER", 0, msg)]) from None


def env_version(env=None):
    """SOCKS_VERSION: 4 or 5 to speak only that version, None (unset) to
    try 5 and fall back to 4.  Raises ConfError naming the variable."""
    env = os.environ if env is None else env
    text = env.get("SOCKS_VERSION", "").strip()
    if not text:
        return None
    if text not in ("4", "5"):
        raise ConfError([("SOCKS_VERSION", 0, "expected 4 or 5 (near '%s')" % C.printable(text))])
    return int(text)


