"""What one worker may buffer in all (issue 12): clients that ask for big
downloads and never read make a worker keep what it could not deliver;
``limit buffers`` (64 MiB by default) bounds the total, and the others are
still served at their usual speed.  Bulk past a direction's first 64 KiB
moves by splice(2) through the worker's pipes (issue 17, ``relay splice``):
the bytes arrive intact both ways, spliced or copied."""

import hashlib
import os
import re
import socket
import struct
import threading
import time

import pytest

import helpers

LOCAL = "timeout shutdown 2\npermit 127.0.0.0 255.0.0.0\n"
MIB = 1 << 20
CAP = 64 * MIB            # the default of limit buffers
MARGIN = 24 * MIB         # sockd.conf(5): the receive buffer, per-session state, the allocator's slack
BLOCK = os.urandom(MIB)


def download_handler(conn):
    """The client says how many bytes it wants (8 bytes, big-endian); they
    come as fast as it (and sockd) takes them.  A small send buffer keeps
    what the kernel holds for 200 stuck downloads modest."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 << 10)
    want = struct.unpack("!Q", helpers.recv_exact(conn, 8))[0]
    view = memoryview(BLOCK)
    while want > 0:
        n = min(want, len(BLOCK))
        conn.sendall(view[:n])
        want -= n


def expected(n):
    h = hashlib.sha256()
    while n > 0:
        h.update(BLOCK[:min(n, len(BLOCK))])
        n -= len(BLOCK)
    return h.hexdigest()


def rss(pids):
    """The resident memory of these processes, in bytes (smaps_rollup)."""
    total = 0
    for pid in pids:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Rss:"):
                    total += int(line.split()[1]) * 1024
    return total


def download(proxy, port, size):
    """A normal client: the whole download through sockd; (seconds, sha256)."""
    c, rep, _ = helpers.socks5_connect(proxy, "127.0.0.1", port, timeout=60)
    assert rep == 0
    t0 = time.monotonic()
    c.sendall(struct.pack("!Q", size))
    h = hashlib.sha256()
    got = 0
    while got < size:
        data = c.recv(MIB)
        if not data:
            break
        h.update(data)
        got += len(data)
    took = time.monotonic() - t0
    c.close()
    assert got == size
    return took, h.hexdigest()


@pytest.mark.serial
def test_clients_that_never_read_hold_at_most_the_buffer_limit(start_sockd):
    srv = helpers.TCPServer(download_handler)
    stuck = []
    try:
        s = start_sockd(LOCAL, workers=1)
        workers = s.wait_workers(1)
        size = 64 * MIB
        alone, digest = download(s.addr, srv.port, size)        # the worker's usual speed
        assert digest == expected(size)
        base = rss(workers)
        # 200 clients ask for as much, then read nothing
        for _ in range(200):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.settimeout(10)
            c.connect(s.addr)
            c.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", srv.port))
            assert helpers.recv_exact(c, 2) == b"\x05\x00" and helpers.recv_exact(c, 10)[1] == 0
            c.sendall(struct.pack("!Q", size))
            stuck.append(c)
        # until the worker has taken all it will take: no growth for a second
        last, still, end = rss(workers), 0, time.monotonic() + 30
        while still < 5 and time.monotonic() < end:
            time.sleep(0.2)
            now = rss(workers)
            still = still + 1 if now <= last + MIB else 0
            last = max(last, now)
        grown = rss(workers) - base
        print("worker memory: %.1f MiB more with 200 clients that do not read (limit %d MiB + %d MiB)" % (
            grown / MIB, CAP // MIB, MARGIN // MIB))
        assert grown <= CAP + MARGIN, "the worker holds %.0f MiB more" % (grown / MIB)
        # a normal client meanwhile: its download at the usual speed
        took, digest = download(s.addr, srv.port, size)
        assert digest == expected(size)
        print("64 MiB download: %.2f s alone, %.2f s beside them" % (alone, took))
        assert took <= 4 * alone + 2.0, "%.2f s beside them, %.2f s alone" % (took, alone)
        assert rss(workers) - base <= CAP + MARGIN
        text = s.log()
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    finally:
        for c in stuck:
            c.close()
        srv.close()


def test_stuck_clients_are_served_again_once_they_read(start_sockd):
    """Paused, not starved: each of 40 clients that stopped reading over a
    small limit gets its whole download once it reads again."""
    srv = helpers.TCPServer(download_handler)
    try:
        s = start_sockd("limit buffers 1M\n" + LOCAL, workers=1)
        size = 8 * MIB
        clients = []
        for _ in range(40):
            c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port, timeout=60)
            assert rep == 0
            c.sendall(struct.pack("!Q", size))
            clients.append(c)
        time.sleep(1)
        results = []

        def drain(c):
            h = hashlib.sha256()
            got = 0
            while got < size:
                data = c.recv(MIB)
                if not data:
                    break
                h.update(data)
                got += len(data)
            results.append((got, h.hexdigest()))
        threads = [threading.Thread(target=drain, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [(size, expected(size))] * 40
    finally:
        srv.close()


def upload_handler(conn):
    """The client says how many bytes it sends (8 bytes, big-endian), sends
    them, and is answered with their sha256 (hex)."""
    want = struct.unpack("!Q", helpers.recv_exact(conn, 8))[0]
    h = hashlib.sha256()
    while want > 0:
        data = conn.recv(min(want, MIB))
        if not data:
            break
        h.update(data)
        want -= len(data)
    conn.sendall(h.hexdigest().encode())


@pytest.mark.parametrize("splice", ["yes", "no"])
def test_bulk_arrives_intact_both_ways_spliced_or_copied(start_sockd, splice):
    down_srv = helpers.TCPServer(download_handler)
    up_srv = helpers.TCPServer(upload_handler)
    try:
        s = start_sockd("relay splice %s\n" % splice + LOCAL, workers=1)
        worker = s.wait_workers(1)[0]
        helpers.greeted(s.addr)         # its own pipes made (a loaded machine measured them too soon)
        base = helpers.fds_of(worker, "pipe:")
        size = 48 * MIB
        took, digest = download(s.addr, down_srv.port, size)
        assert digest == expected(size)
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", up_srv.port, timeout=60)
        assert rep == 0
        c.sendall(struct.pack("!Q", size))
        view = memoryview(BLOCK)
        for _ in range(size // MIB):
            c.sendall(view)
        assert helpers.recv_exact(c, 64).decode() == expected(size)
        c.close()
        # both sessions ended in the worker (it logs the end after releasing
        # them), which may be after the client has its digest
        helpers.wait_for(lambda: len(re.findall(r"terminated -- ", s.log())) >= 2, 10, what="both sessions' ends")
        # the pipes a splicing worker keeps for the next bulk session; none when it copies
        spare = helpers.fds_of(worker, "pipe:") - base
        assert (spare > 0) == (splice == "yes"), spare
        assert spare <= 4
        text = s.log()
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    finally:
        down_srv.close()
        up_srv.close()
