"""rtelnet HOST [PORT]

A line-mode telnet client through socks.conf.  Every option the server
asks for or offers is refused (DO -> WONT, WILL -> DONT), so the session
stays plain network-virtual-terminal text; subnegotiations are skipped.
Lines typed (or read from standard input) are sent with CR LF.  A line
holding only the escape character ^] gives a ``telnet>`` prompt (quit,
close).  When standard input ends, rtelnet keeps printing what the server
sends until it closes or stays silent for QUIET seconds.
"""

import argparse
import os
import selectors
import socket
import sys
import time

from . import common

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ESCAPE = b"\x1d"
QUIET = 2.0
MAX_LINE = 8192


class Telnet:
    """The telnet byte stream, pure: ``feed(data)`` returns (text for the
    user, bytes to answer).  No state grows with the input: a
    subnegotiation's bytes are skipped, not kept."""

    DATA, CMD, OPT, SUB, SUB_IAC = range(5)

    def __init__(self):
        self.state = self.DATA
        self.verb = 0

    def feed(self, data):
        out, answer = bytearray(), bytearray()
        for b in data:
            st = self.state
            if st == self.DATA:
                if b == IAC:
                    self.state = self.CMD
                else:
                    out.append(b)
            elif st == self.CMD:
                if b == IAC:
                    out.append(IAC)             # an escaped 255 data byte
                    self.state = self.DATA
                elif b in (DO, DONT, WILL, WONT):
                    self.verb = b
                    self.state = self.OPT
                elif b == SB:
                    self.state = self.SUB
                else:
                    self.state = self.DATA      # NOP, GA, AYT...: nothing to do
            elif st == self.OPT:
                if self.verb == DO:
                    answer += bytes((IAC, WONT, b))
                elif self.verb == WILL:
                    answer += bytes((IAC, DONT, b))
                self.state = self.DATA          # WONT/DONT: we already are in that state
            elif st == self.SUB:
                if b == IAC:
                    self.state = self.SUB_IAC
            else:
                self.state = self.DATA if b == SE else self.SUB
        return bytes(out), bytes(answer)


def encode_line(line):
    """A line for the wire: IAC doubled, CR LF at the end."""
    return line.rstrip(b"\r\n").replace(bytes((IAC,)), bytes((IAC, IAC))) + b"\r\n"


def escape_prompt(out):
    """The telnet> prompt after ^].  Returns True to end the session."""
    while True:
        out.write("telnet> ")
        out.flush()
        cmd = sys.stdin.readline()
        if not cmd:
            return True
        cmd = cmd.strip()
        if cmd in ("q", "quit", "c", "close"):
            return True
        if cmd in ("", "continue"):
            return False
        out.write("commands: close, quit (end the session); continue (or an empty line)\n")


def session(sock, out, interactive):
    tn = Telnet()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "net")
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "user")
    sock.setblocking(False)
    typed = b""
    stdin_done = False
    last = time.monotonic()
    try:
        while True:
            wait = None
            if stdin_done:
                wait = QUIET - (time.monotonic() - last)
                if wait <= 0:
                    return
            events = sel.select(wait)
            for key, _ in events:
                if key.data == "net":
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        out.write("\nrtelnet: %s\n" % (exc.strerror or exc))
                        return
                    if not data:
                        out.write("Connection closed by foreign host.\n")
                        return
                    last = time.monotonic()
                    text, answer = tn.feed(data)
                    if answer:
                        sock.setblocking(True)
                        sock.settimeout(common.WAIT)
                        sock.sendall(answer)
                        sock.setblocking(False)
                    out.write(common.printable(text))
                    out.flush()
                else:
                    chunk = os.read(sys.stdin.fileno(), 4096)
                    if not chunk:
                        sel.unregister(sys.stdin.fileno())
                        stdin_done = True
                        last = time.monotonic()
                        if typed:
                            chunk = b"\n"
                        else:
                            continue
                    typed += chunk
                    if len(typed) > MAX_LINE and b"\n" not in typed:
                        typed += b"\n"
                    while b"\n" in typed:
                        line, typed = typed.split(b"\n", 1)
                        if line.rstrip(b"\r") == ESCAPE and interactive:
                            if escape_prompt(out):
                                return
                            continue
                        sock.setblocking(True)
                        sock.settimeout(common.WAIT)
                        sock.sendall(encode_line(line))
                        sock.setblocking(False)
    finally:
        sel.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="rtelnet", description="line-mode telnet through a SOCKS server, "
                                "as socks.conf says")
    p.add_argument("host")
    p.add_argument("port", nargs="?", default="telnet")
    a = p.parse_args(argv)
    common.start("rtelnet")
    out = sys.stdout
    try:
        port = common.port_of(a.port)
        out.write("Trying %s...\n" % a.host)
        out.flush()
        sock = common.connect(a.host, port)
    except common.Fail as exc:
        sys.stderr.write("rtelnet: %s\n" % exc)
        return 1
    out.write("Connected to %s.\nEscape character is '^]'.\n" % a.host)
    out.flush()
    try:
        session(sock, out, sys.stdin.isatty())
    except (OSError, socket.timeout) as exc:
        sys.stderr.write("rtelnet: %s\n" % (getattr(exc, "strerror", None) or exc))
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
