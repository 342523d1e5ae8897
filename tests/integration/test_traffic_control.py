"""Traffic control against a real sockd on loopback: bandwidth limits
measured with curl (downloads from a local HTTP server, uploads to a
local sink), shared by the sessions of one user across two workers and
kept apart between users; a daily quota that refuses the next request and
whose count survives SIGHUP, a SIGKILLed worker, and SIGTERM and a new
start; a paused session that still honours ``timeout idle`` and
half-close; the accounting tool on what the server wrote.

Users log in with RFC 1929 (a passwd file made by sockd-passwd, curl's
``socks5h://user:password@``).  Every measurement is 3 to 5 seconds of
traffic; every process is stopped by its PID."""

import http.server
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import helpers
from helpers import need, wait_for

MIB = 1 << 20
PASSWORD = "pw-for-traffic"
USERS = ("alice", "bob", "carol", "dave", "erin")


def tool(name):
    exe = os.path.join(os.path.dirname(helpers.SOCKD), name)
    assert os.path.exists(exe), exe
    return exe


@pytest.fixture(scope="module")
def passwd(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("traffic") / "passwd")
    for i, user in enumerate(USERS):
        r = subprocess.run([tool("sockd-passwd")] + (["-c"] if i == 0 else []) + ["-i", "-C", "4", path, user],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    with open(d / "10m.bin", "wb") as f:
        f.write(os.urandom(10 * MIB))
    with open(d / "1m.bin", "wb") as f:
        f.write(os.urandom(MIB))
    with open(d / "6m.bin", "wb") as f:
        f.write(os.urandom(6 * MIB))
    with open(d / "3m.bin", "wb") as f:
        f.write(os.urandom(3 * MIB))
    with open(d / "eighth.bin", "wb") as f:
        f.write(os.urandom(3 * MIB // 4))
    return d


@pytest.fixture
def web(files):
    srv = helpers.HTTPServer(files)
    yield srv
    srv.close()


class Sink:
    """An HTTP server that takes PUT bodies and remembers, per upload, the
    bytes and the seconds from its first byte to its last."""

    def __init__(self):
        uploads = self.uploads = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                n = int(self.headers.get("Content-Length", "0"))
                got, first = 0, None
                while got < n:
                    chunk = self.rfile.read1(min(1 << 16, n - got))
                    if not chunk:
                        break
                    if first is None:
                        first = time.monotonic()
                    got += len(chunk)
                uploads.append((got, time.monotonic() - (first or time.monotonic())))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def conf(passwd, db, extra):
    return ("workers 2\nmethods username\npasswd %s\naccounting database %s\naccounting interval 0.5\n%s"
            "permit 0/0\n" % (passwd, db, extra))


def curl(proxy, user, url, upload=None, timeout=30):
    """Start curl through sockd as ``user``; returns the Popen (its stdout:
    bytes and seconds, as curl measured them)."""
    cmd = [need("curl"), "-s", "-S", "-o", "/dev/null", "--max-time", str(timeout),
           "-x", "socks5h://%s:%s@127.0.0.1:%d" % (user, PASSWORD, proxy.port),
           "-w", "%{size_download} %{size_upload} %{time_total} %{http_code}"]
    if upload is not None:
        cmd += ["-T", str(upload)]
    return subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p, timeout=40):
    """(bytes down, bytes up, seconds, http code) of a curl started by curl()."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    down, up, secs, code = out.split()
    return int(down), int(up), float(secs), code


def within(rate, limit, tolerance=0.10):
    return abs(rate - limit) <= tolerance * limit


@pytest.mark.serial                     # rates measured
def test_one_download_and_one_upload_each_go_at_2_mbs(start_sockd, tmp_path, passwd, files, web, sink):
    s = start_sockd(conf(passwd, tmp_path / "acct.db", "limit bandwidth user alice 2M\n"))
    down = curl(s, "alice", web.url("6m.bin"))                 # 3 s each way at 2M
    up = curl(s, "alice", "http://127.0.0.1:%d/up" % sink.port, upload=files / "6m.bin")
    n_down, _, t_down, code = result(down)
    assert (n_down, code) == (6 * MIB, "200")
    _, n_up, t_up, code = result(up)
    assert (n_up, code) == (6 * MIB, "200")
    (got, secs), = sink.uploads
    rate_down, rate_up = n_down / t_down, got / secs
    print("download %.0f bytes/s over %.2fs, upload %.0f bytes/s over %.2fs (limit %d)" % (
        rate_down, t_down, rate_up, secs, 2 * MIB))
    assert within(rate_down, 2 * MIB), rate_down
    assert within(rate_up, 2 * MIB), rate_up
    assert 2.7 <= t_down <= 3.3
    line = s.wait_log(r"terminated -- Connect from alice.*; shaped: down paused [0-9.]+s of [0-9.]+s by user alice "
                      r"\(2097152 bytes/s, .*sockd0.conf:\d+\)")
    assert line


def worker_of(s, user, n):
    """The pids of the workers that served ``user``'s last ``n`` sessions."""
    found = re.findall(r"sockd\[(\d+)\]: terminated -- Connect from %s\(" % user, s.log())
    return found[-n:]


@pytest.mark.serial                     # a rate measured
def test_eight_downloads_of_one_user_over_two_workers_share_its_limit(start_sockd, tmp_path, passwd, web):
    """The limit is the user's, whichever workers serve the sessions.  Which
    worker the kernel wakes for a connection is not the test's to choose
    (epoll's exclusive wake-up goes to the first worker waiting, so eight at
    once went to one worker in CI now and then, and in three rounds of three
    on a loaded machine): the first two sessions are put one on each worker
    (pinned_curl), the other six start together."""
    s = start_sockd(conf(passwd, tmp_path / "acct.db", "limit bandwidth user bob 2M\n"))
    a, b = s.wait_workers(2)
    url = web.url("eighth.bin")
    start = time.monotonic()
    procs = [pinned_curl(s, "bob", url, b, a), pinned_curl(s, "bob", url, a, b)]
    procs += [curl(s, "bob", url) for _ in range(6)]          # 6 MiB in all: 3 s at 2M
    results = [result(p) for p in procs]
    wall = time.monotonic() - start
    total = sum(r[0] for r in results)
    assert total == 6 * MIB and all(r[3] == "200" for r in results)
    rate = total / wall
    pids = wait_for(lambda: (lambda w: w if len(w) == 8 else None)(worker_of(s, "bob", 10 ** 6)),
                    5, what="eight terminated lines")
    print("8 downloads: %.0f bytes/s in all over %.2fs (limit %d); workers %s" % (
        rate, wall, 2 * MIB, sorted(set(pids))))
    assert within(rate, 2 * MIB), rate
    assert sorted(set(pids)) == sorted([str(a), str(b)]), pids


def pinned_curl(s, user, url, worker, other):
    """curl() with its session on ``worker``: ``other`` is paused
    (helpers.paused) until ``worker`` holds the session's two sockets.  The
    pause lasts one handshake, and ``other`` has no session of the test's yet
    (or one, which the shared limit lets the running worker's make up for)."""
    base = helpers.fds_of(worker, "socket:")
    with helpers.paused(other):
        p = curl(s, user, url)
        wait_for(lambda: helpers.fds_of(worker, "socket:") >= base + 2, 10,
                 what="the session on worker %d" % worker)
    return p


@pytest.mark.serial                     # rates measured
def test_two_users_limited_apart_each_get_their_own_and_a_third_is_unaffected(start_sockd, tmp_path, passwd, web):
    s = start_sockd(conf(passwd, tmp_path / "acct.db",
                         "limit bandwidth user carol 2M\nlimit bandwidth user erin 1M\n"))
    c = curl(s, "carol", web.url("6m.bin"))          # 3 s each, side by side
    e = curl(s, "erin", web.url("3m.bin"))
    time.sleep(0.5)
    d = curl(s, "dave", web.url("10m.bin"))
    n_d, _, t_d, _ = result(d)
    n_c, _, t_c, _ = result(c)
    n_e, _, t_e, _ = result(e)
    assert (n_c, n_e) == (6 * MIB, 3 * MIB)
    rate_c, rate_e, rate_d = n_c / t_c, n_e / t_e, n_d / t_d
    print("carol %.0f bytes/s (limit %d), erin %.0f bytes/s (limit %d), dave (no limit) %.0f bytes/s" % (
        rate_c, 2 * MIB, rate_e, MIB, rate_d))
    assert within(rate_c, 2 * MIB), rate_c
    assert within(rate_e, MIB), rate_e
    assert n_d == 10 * MIB and rate_d > 10 * MIB, rate_d


def accounted(db, key):
    r = subprocess.run([tool("sockd-accounting"), "-d", str(db), "--csv", "-p", "day"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines()[1:]:
        kind, name, up, down, total = line.split(",")[:5]
        if "%s %s" % (kind, name) == key:
            return int(total)
    return 0


def refused(s, user, url):
    """A request of ``user`` is refused by its quota (curl: the SOCKS 5
    reply 2, 'connection not allowed')."""
    r = subprocess.run([need("curl"), "-s", "-o", "/dev/null", "--max-time", "10", "-x",
                        "socks5h://%s:%s@127.0.0.1:%d" % (user, PASSWORD, s.port), url],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 97                     # curl: CURLE_PROXY, the proxy refused


def test_a_daily_quota_refuses_and_its_count_survives_reload_worker_death_and_restart(
        start_sockd, tmp_path, passwd, web):
    db = tmp_path / "acct.db"
    text = conf(passwd, db, "quota user carol 2M per day\n")
    s = start_sockd(text)
    n, _, _, code = result(curl(s, "carol", web.url("1m.bin")))
    assert (n, code) == (MIB, "200")
    assert not refused(s, "carol", web.url("1m.bin"))       # 1 MiB + 1 MiB: reached with this one
    assert refused(s, "carol", web.url("1m.bin"))
    s.wait_log(r"refused -- Connect from carol\(unknown\)@127.0.0.1 to 127.0.0.1 \(\d+\): quota user carol "
               r"2097152 bytes per day reached for user carol \(.*sockd0.conf:\d+; \d+ bytes used this day\)")
    assert result(curl(s, "dave", web.url("1m.bin")))[0] == MIB           # another user is not refused
    # a reload keeps the count
    os.kill(s.proc.pid, signal.SIGHUP)
    s.wait_log("reloaded")
    assert refused(s, "carol", web.url("1m.bin"))
    # a worker SIGKILLed loses nothing the table has: dave's bytes, counted
    # by the worker that served them, reach the database through the master
    before = accounted(db, "user dave")
    assert result(curl(s, "dave", web.url("1m.bin")))[0] == MIB
    for pid in s.worker_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: accounted(db, "user dave") >= before + MIB, 10, what="dave's count in the database")
    s.wait_log(r"worker \d \(pid \d+\) exited with signal 9; starting another")
    s.wait_workers(2)
    assert refused(s, "carol", web.url("1m.bin"))
    # SIGTERM, then a new start on the same database
    assert s.stop() == 0
    used = accounted(db, "user carol")
    assert used >= 2 * MIB
    s2 = start_sockd(text, name="again")
    assert refused(s2, "carol", web.url("1m.bin"))
    assert result(curl(s2, "alice", web.url("1m.bin")))[0] == MIB


@pytest.mark.serial                     # the shaping and the idle timeout timed
def test_a_paused_session_honours_timeout_idle_and_half_close(start_sockd, tmp_path, passwd):
    s = start_sockd(conf(passwd, tmp_path / "acct.db", "timeout idle 1\nlimit bandwidth session 64K burst 16K\n"))

    def half_closer(conn):
        # answers once the client's half-close arrives: all it sent, counted
        n = 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            n += len(data)
        conn.sendall(b"got %d\n" % n)

    srv = helpers.TCPServer(half_closer)
    try:
        c = socks5_login(s, srv.port)
        payload = os.urandom(112 << 10)                  # 1.5 seconds at 64 KiB/s, after the burst
        start = time.monotonic()
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        answer = helpers.recv_all(c)
        took = time.monotonic() - start
        assert answer == b"got %d\n" % len(payload)
        assert took >= 1.3, took                           # it was shaped: (112K - 16K) / 64K s
        c.close()
        # a session that then sends nothing is closed by timeout idle, shaped or not
        c = socks5_login(s, srv.port)
        c.sendall(os.urandom(96 << 10))                    # more than the burst: paused on the way
        start = time.monotonic()
        assert helpers.recv_all(c) == b""                  # nothing more sent: the idle timeout ends it
        idle = time.monotonic() - start
        c.close()
        s.wait_log(r"timed-out -- Connect from alice.*: idle for 1s")
        assert 1.0 <= idle <= 5.0, idle
    finally:
        srv.close()


def socks5_login(s, port, user="alice"):
    c = socket.create_connection(s.addr, 10)
    c.sendall(b"\x05\x01\x02")
    assert helpers.recv_exact(c, 2) == b"\x05\x02"
    c.sendall(b"\x01" + bytes([len(user)]) + user.encode() + bytes([len(PASSWORD)]) + PASSWORD.encode())
    assert helpers.recv_exact(c, 2) == b"\x01\x00"
    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big"))
    rep = helpers.recv_exact(c, 10)
    assert rep[1] == 0, rep
    return c


def test_the_accounting_tool_shows_the_totals(start_sockd, tmp_path, passwd, web):
    db = tmp_path / "acct.db"
    s = start_sockd(conf(passwd, db, "limit bandwidth address 127.0.0.0/8 100M\n"))
    assert result(curl(s, "erin", web.url("1m.bin")))[0] == MIB
    wait_for(lambda: accounted(db, "user erin") >= MIB, 10, what="erin's count")
    r = subprocess.run([tool("sockd-accounting"), "-d", str(db)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in r.stdout.splitlines()[2:]}
    assert rows[("user", "erin")][1] == "1.0M" and ("address", "127.0.0.1") in rows, r.stdout
    r = subprocess.run([tool("sockd-accounting"), "-d", str(db), "--reset", "user", "erin"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "user erin:" in r.stdout, r.stderr
    s.wait_log(r"the counts of user erin were reset")
    assert accounted(db, "user erin") == 0
    os.kill(s.proc.pid, signal.SIGUSR1)
    s.wait_log(r"traffic: today's top consumers: address 127.0.0.1 \d+ bytes")


@pytest.mark.serial                     # what fits the budget depends on the sending time
def test_udp_over_the_budget_is_dropped_and_counted(start_sockd, tmp_path, passwd):
    db = tmp_path / "acct.db"
    s = start_sockd(conf(passwd, db, "limit bandwidth user alice 20K/1M burst 10K/1M\n"))
    echo = helpers.UDPEcho()
    try:
        c = socket.create_connection(s.addr, 10)
        c.sendall(b"\x05\x01\x02")
        assert helpers.recv_exact(c, 2) == b"\x05\x02"
        c.sendall(b"\x01\x05alice" + bytes([len(PASSWORD)]) + PASSWORD.encode())
        assert helpers.recv_exact(c, 2) == b"\x01\x00"
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        u.settimeout(0.5)
        c.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + u.getsockname()[1].to_bytes(2, "big"))
        rep = helpers.recv_exact(c, 10)
        assert rep[1] == 0, rep
        relay = (socket.inet_ntoa(rep[4:8]), int.from_bytes(rep[8:10], "big"))
        header = b"\0\0\0\x01" + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big")
        for _ in range(200):                           # 200 KB in about 0.2 s: ~14 KB fit the budget
            u.sendto(header + b"z" * 1000, relay)
            time.sleep(0.001)
        back = 0
        try:
            while True:
                u.recvfrom(65535)
                back += 1
        except socket.timeout:
            pass
        c.close()
        u.close()
        line = s.wait_log(r"terminated -- UDP associate from alice.*, (\d+) dropped \((\d+) over the bandwidth limit\)")
        dropped, over = int(line.group(1)), int(line.group(2))
        passed = len(echo.seen)
        print("UDP: %d datagrams of 1000 bytes sent, %d relayed, %d echoed back, %d over the limit" % (
            200, passed, back, over))
        assert over == dropped and over + passed == 200
        assert 8 <= passed <= 25 and back == passed
        wait_for(lambda: accounted(db, "user alice") >= 2000 * passed, 10, what="alice's UDP bytes counted")
    finally:
        echo.close()


@pytest.mark.serial                     # rates measured
def test_a_reload_changes_the_limit_and_keeps_the_counts(start_sockd, tmp_path, passwd, web):
    db = tmp_path / "acct.db"
    s = start_sockd(conf(passwd, db, "limit bandwidth user bob 512K\n"))
    n, _, secs, _ = result(curl(s, "bob", web.url("1m.bin")))
    before = n / secs
    wait_for(lambda: accounted(db, "user bob") >= MIB, 10, what="bob's first MiB counted")
    with open(s.conf_path) as f:
        text = f.read()
    with open(s.conf_path, "w") as f:
        f.write(text.replace("limit bandwidth user bob 512K", "limit bandwidth user bob 1M"))
    os.kill(s.proc.pid, signal.SIGHUP)
    s.wait_log("reloaded")
    n, _, secs, _ = result(curl(s, "bob", web.url("1m.bin")))
    after = n / secs
    print("bob before the reload %.0f bytes/s (limit %d), after %.0f bytes/s (limit %d)" % (
        before, 512 << 10, after, MIB))
    # 1 MiB at 512K is about 2 s (the burst a tenth of that); at 1M about 1 s
    assert within(before, 512 << 10, 0.15) and within(after, MIB, 0.15)
    wait_for(lambda: accounted(db, "user bob") >= 2 * MIB, 10, what="both MiB counted")


@pytest.mark.serial                     # a rate measured
def test_the_fork_model_shares_the_same_table(start_sockd, tmp_path, passwd, web):
    s = start_sockd(conf(passwd, tmp_path / "acct.db", "limit bandwidth user carol 1M\n"), model="fork")
    start = time.monotonic()
    procs = [curl(s, "carol", web.url("1m.bin")) for _ in range(2)]
    total = sum(result(p)[0] for p in procs)
    rate = total / (time.monotonic() - start)
    print("fork model, two children of one user: %.0f bytes/s in all (limit %d)" % (rate, MIB))
    assert total == 2 * MIB and within(rate, MIB, 0.15)
