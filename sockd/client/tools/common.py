"""What the clients share: starting the library (a socks.conf mistake stops
the program before it does anything), connecting through it with the
reason for a refusal on stderr, and showing what the network sends without
letting it drive the terminal."""

import sys

from .. import core
from ...errors import Bad
from ...validators import to_port

WAIT = 60.0                 # every wait on the network
MAX_ANSWER = 4 << 20        # the most a finger or whois answer may bring


class Fail(Exception):
    """A message for the user; the program exits 1."""


def start(prog):
    """Start the library; report a configuration mistake and exit 1."""
    core.start()
    try:
        core.check_config()
    except core.SocksConfigError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        sys.exit(1)


def connect(host, port, timeout=WAIT):
    """A connected socksocket, or Fail with the reason (socks.conf line,
    server reply, or the system's error)."""
    s = core.socksocket(core.socket.AF_INET6 if ":" in host else core.socket.AF_INET, core.socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except core.SocksError as exc:
        s.close()
        raise Fail(str(exc)) from None
    except core.socket.gaierror as exc:
        s.close()
        raise Fail("%s: %s" % (host, exc.strerror)) from None
    except OSError as exc:
        s.close()
        raise Fail("connect to %s port %d: %s" % (host, port, exc.strerror or exc)) from None
    return s


_SHOW = bytes(c if c in (9, 10) or 32 <= c < 127 or c >= 160 else ord("?") for c in range(256))


def printable(data):
    """Network bytes as text a terminal shows but does not obey: CR LF
    becomes LF, other control characters become '?'."""
    return data.replace(b"\r\n", b"\n").translate(_SHOW).decode("latin-1")


def port_of(text, proto="tcp"):
    """A port number (1-65535) or service name, as sockd.conf reads them
    (validators.to_port).  Raises Fail."""
    try:
        port = to_port(text, proto)
    except Bad:
        raise Fail("bad port: %s" % text) from None
    if port == 0:
        raise Fail("bad port: %s" % text)
    return port


def query(host, port, line, out=None):
    """Send one query line, copy the answer to ``out`` until the server
    closes (bounded in size and in time).  Raises Fail."""
    out = out or sys.stdout
    s = connect(host, port)
    try:
        s.sendall(line.encode("utf-8", "replace") + b"\r\n")
        total = 0
        pending = b""
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                raise Fail("%s: no answer for %d seconds" % (host, WAIT)) from None
            except OSError as exc:
                raise Fail("%s: %s" % (host, exc.strerror or exc)) from None
            if not data:
                break
            total += len(data)
            if total > MAX_ANSWER:
                raise Fail("%s: answer longer than %d bytes; stopped" % (host, MAX_ANSWER))
            data = pending + data
            # keep a trailing CR: its LF may come in the next read
            pending, data = (data[-1:], data[:-1]) if data.endswith(b"\r") else (b"", data)
            out.write(printable(data))
            out.flush()
        if pending:
            out.write(printable(pending))
    finally:
        s.close()


def run_query(prog, host, port_text, line, heading=""):
    """The whole of rfinger and rwhois once their arguments are read: start,
    print ``heading``, ask, show the answer.  Returns the exit status."""
    start(prog)
    try:
        port = port_of(port_text)
        sys.stdout.write(heading)
        query(host, port, line)
    except Fail as exc:
        sys.stdout.flush()
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    return 0
