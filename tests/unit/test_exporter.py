"""exporter.py: the HTTP answers (pure), and the endpoint driven the way
the master drives it -- a select.poll of its own, real sockets on
loopback -- never blocking: a stalled client, one outside the access list,
one too many, a head too long, a slow reader."""

import select
import socket
import time

import pytest

from sockd import exporter as X
from sockd import rules as R


def test_answer_serves_only_get_metrics():
    body = lambda: "x_total 1\n"  # noqa: E731
    code, out = X.answer(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", body)
    assert code == 200
    head, _, payload = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert b"Content-Length: 10" in head and b"Connection: close" in head
    assert payload == b"x_total 1\n"
    assert X.answer(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", body)[0] == 200
    assert X.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", body)[0] == 405
    assert b"Allow: GET" in X.answer(b"POST /metrics HTTP/1.1\r\n\r\n", body)[1]
    assert X.answer(b"GET / HTTP/1.1\r\n\r\n", body)[0] == 404
    assert X.answer(b"GET /metrics HTTP/2.0\r\n\r\n", body)[0] == 400
    assert X.answer(b"GET /metrics\r\n\r\n", body)[0] == 400
    assert X.answer(b"\x16\x03\x01garbage\r\n\r\n", body)[0] == 400


def test_head_end():
    assert X.head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest") == 24
    assert X.head_end(b"GET / HTTP/1.1\nA: b\n\n") == 21
    assert X.head_end(b"GET / HTTP/1.1\r\nA: b\r\n") == -1


class Log:
    def __init__(self):
        self.lines = []

    def notice(self, m):
        self.lines.append(m)

    error = notice


class Bed:
    """An Endpoint on 127.0.0.1 and a poll loop that runs it."""

    def __init__(self, allowed=("127.0.0.0/8",), body=lambda: "x_total 1\n"):
        self.now = 100.0
        self.log = Log()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        lsock.setblocking(False)
        self.addr = lsock.getsockname()
        specs = [R.parse_addr_spec(a) for a in allowed]
        self.ep = X.Endpoint(self.addr, lsock, specs, body, lambda: self.now, self.log)
        self.poller = select.poll()
        self.ep.attach(self.poller)

    def run(self, secs=0.2):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            for fd, ev in self.poller.poll(20):
                assert self.ep.owns(fd)
                self.ep.on_event(fd, ev)
            self.ep.tick(self.now)

    def client(self, source="127.0.0.1"):
        c = socket.create_connection(self.addr, 2, source_address=(source, 0))
        c.settimeout(2)
        return c

    def close(self):
        self.ep.close()


@pytest.fixture
def bed():
    b = Bed()
    yield b
    b.close()


def read_all(bed, c):
    out = b""
    c.setblocking(False)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        bed.run(0.002)
        while True:
            try:
                d = c.recv(65536)
            except BlockingIOError:
                break
            if not d:
                return out
            out += d
    raise AssertionError("no end of the answer: %r" % out[:200])


def test_a_scrape_and_a_stalled_client_beside_it(bed):
    stalled = bed.client()
    stalled.sendall(b"GET /metrics HTTP/1.1\r\n")
    c = bed.client()
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    out = read_all(bed, c)
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"x_total 1\n")
    assert bed.ep.served == 1
    c.close()
    bed.run(0.05)
    assert len(bed.ep.conns) == 1            # the stalled one, until its deadline
    bed.now += X.TIMEOUT
    bed.run(0.05)
    assert bed.ep.conns == {}
    assert stalled.recv(10) == b""


def test_outside_the_list_and_one_too_many_are_closed_without_a_word():
    b = Bed(allowed=("127.0.0.1/32",))
    try:
        c = b.client("127.0.0.2")
        b.run(0.05)
        assert c.recv(10) == b""
        assert b.ep.refused == 1 and b.ep.conns == {}
        assert "not in the metrics access list" in b.log.lines[0]
        b.client("127.0.0.3")
        b.run(0.05)
        assert b.ep.refused == 2 and len(b.log.lines) == 1      # logged at most once a minute
        held = [b.client() for _ in range(X.MAX_CONNS)]
        b.run(0.05)
        assert len(b.ep.conns) == X.MAX_CONNS
        extra = b.client()
        b.run(0.05)
        assert extra.recv(10) == b""
        assert b.ep.refused == 3
        for h in held:
            h.close()
    finally:
        b.close()


def test_a_head_too_long_is_answered_431_and_the_rest_read_until_the_client_closes(bed):
    c = bed.client()
    c.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (X.MAX_REQUEST + 20000))
    assert read_all(bed, c).startswith(b"HTTP/1.1 431 ")     # not reset: the rest was read
    c.close()
    bed.run(0.05)
    assert bed.ep.conns == {}


def test_an_answered_client_that_never_closes_is_dropped_after_the_linger(bed):
    c = bed.client()
    c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert read_all(bed, c).endswith(b"x_total 1\n")         # end of file: the half-close
    assert len(bed.ep.conns) == 1
    bed.now += X.LINGER
    bed.run(0.05)
    assert bed.ep.conns == {}


def test_a_big_answer_to_a_slow_reader_goes_out_in_pieces():
    big = "y_total 1\n" * 1600000         # 16 MB: more than the socket buffers take at once
    b = Bed(body=lambda: big)
    try:
        c = b.client()
        c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        t0 = time.monotonic()
        b.run(0.05)                       # nothing read yet: the endpoint waits for POLLOUT, never blocks
        assert time.monotonic() - t0 < 1
        pending = next(iter(b.ep.conns.values())).out
        assert pending is not None and 0 < len(pending) < len(big)
        out = read_all(b, c)
        assert out.endswith(big.encode()) and len(out) > len(big)
    finally:
        b.close()


def test_forget_closes_every_socket(bed):
    c = bed.client()
    bed.run(0.05)
    conn = next(iter(bed.ep.conns.values())).sock
    bed.ep.forget()
    assert conn.fileno() == -1 and bed.ep.sock.fileno() == -1
