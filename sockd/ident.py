"""RFC 1413 (identd): who is asking.

The codec is pure: ``query(client_port, server_port)`` builds the request
and ``parse_reply`` reads the answer.  ``IdentQuery`` asks the client's
identd from the poll loop without blocking it: a non-blocking connect from
the address the client reached, one request, at most MAX_REPLY bytes of
answer, all within the timeout.  The identd runs on the client's side and
may be hostile: anything but a well-formed USERID answer for the right
ports counts as unreachable, as in the classic sockd.
"""

import errno
import socket

from .loop import EPOLLIN, EPOLLOUT

IDENT_PORT = 113
MAX_REPLY = 1024          # RFC 1413 replies are one short line
MAX_USERID = 64           # the formal grammar's limit on the user id

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

USERID, ERROR, UNREACHABLE = "USERID", "ERROR", "UNREACHABLE"


def query(client_port, server_port):
    """The request: the port on the identd's host first (the client's port),
    then the port on ours."""
    return b"%d , %d\r\n" % (client_port, server_port)


def parse_reply(data, client_port, server_port):
    """Read one reply line.  Returns (USERID, user) or (ERROR, reason); a
    malformed reply, or one about other ports, gives (ERROR, "garbage")."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return ERROR, "garbage"
    parts = text.split(":", 3)
    if len(parts) < 3:
        return ERROR, "garbage"
    ports = parts[0].split(",")
    try:
        p1, p2 = (int(p.strip()) for p in ports)
    except ValueError:
        return ERROR, "garbage"
    if (p1, p2) != (client_port, server_port):
        return ERROR, "wrong ports"
    kind = parts[1].strip().upper()
    if kind == "ERROR":
        return ERROR, parts[2].strip()[:32] or "UNKNOWN-ERROR"
    if kind != "USERID" or len(parts) != 4:
        return ERROR, "garbage"
    # USERID : opsys[,charset] : user-id -- the user id is everything after
    # the third colon, and may itself hold colons
    user = parts[3].strip()
    if not user or len(user) > MAX_USERID:
        return ERROR, "bad user id"
    if any(ord(c) < 33 or ord(c) > 126 for c in user):
        return ERROR, "bad user id"
    return USERID, user


class IdentQuery:
    """One identd lookup driven by ``loop``; ``done(kind, value)`` is called
    exactly once: (USERID, name), (ERROR, reason) or (UNREACHABLE, reason)."""

    __slots__ = ("loop", "sock", "fd", "done", "timer", "request", "cport", "sport", "buf", "sent")

    def __init__(self, loop, local_ip, client_ip, client_port, server_port, timeout, done):
        self.loop = loop
        self.done = done
        self.cport, self.sport = client_port, server_port
        self.request = query(client_port, server_port)
        self.buf = b""
        self.sent = 0
        self.sock = None
        self.timer = loop.call_later(timeout, self.on_timeout)
        fam = socket.AF_INET6 if ":" in client_ip else socket.AF_INET
        try:
            s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.finish(UNREACHABLE, exc.strerror)
            return
        self.sock = s
        self.fd = s.fileno()
        try:
            if local_ip and fam == socket.AF_INET:
                # from the address the client reached; no port is taken
                # until connect, so lookups cannot exhaust ephemeral ports
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((local_ip, 0))
            elif local_ip:
                s.bind((local_ip, 0))
            err = s.connect_ex((client_ip, IDENT_PORT))
        except OSError as exc:
            self.finish(UNREACHABLE, exc.strerror)
            return
        if err not in (0, errno.EINPROGRESS):
            self.finish(UNREACHABLE, errno.errorcode.get(err, str(err)))
            return
        loop.add(self.fd, EPOLLOUT, self.on_event)

    def on_event(self, ev):
        s = self.sock
        if self.sent < len(self.request):
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.finish(UNREACHABLE, errno.errorcode.get(err, str(err)))
                return
            try:
                self.sent += s.send(self.request[self.sent:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.finish(UNREACHABLE, exc.strerror)
                return
            if self.sent == len(self.request):
                self.loop.modify(self.fd, EPOLLIN)
            return
        try:
            data = s.recv(MAX_REPLY - len(self.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.finish(UNREACHABLE, exc.strerror)
            return
        self.buf += data
        if b"\n" in self.buf or not data or len(self.buf) >= MAX_REPLY:
            if not self.buf:
                self.finish(UNREACHABLE, "closed without an answer")
                return
            kind, value = parse_reply(self.buf, self.cport, self.sport)
            self.finish(kind, value)

    def on_timeout(self):
        self.timer = None
        self.finish(UNREACHABLE, "timed out")

    def finish(self, kind, value):
        if self.done is None:
            return
        done, self.done = self.done, None
        self.cancel()
        done(kind, value)

    def close(self):
        """The loop's error handler: a bug met this lookup; the session goes
        on as if identd could not be reached."""
        self.finish(UNREACHABLE, "internal error")

    def cancel(self):
        """Forget the lookup (the client went away): no callback."""
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.loop.remove(self.fd)
            self.sock.close()
            self.sock = None
