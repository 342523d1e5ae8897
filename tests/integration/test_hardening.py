"""A SOCKS server faces the network: silent and hostile clients, floods,
faults, limits, descriptor exhaustion, and bulk data that must arrive
intact -- in both process models."""

import hashlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import helpers
from helpers import need

LOCAL = "timeout shutdown 2\npermit 127.0.0.0 255.0.0.0\npermit ::1/128\n"


def no_bugs_logged(s):
    text = s.log()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]


# --- timeouts and garbage ------------------------------------------------------------------

@pytest.mark.serial                     # 300 silent clients; the one beside them timed
def test_silent_clients_are_closed_while_others_are_served(start_sockd, echo_server):
    s = start_sockd("timeout negotiate 2\n" + LOCAL, workers=2)
    silent = [socket.create_connection(s.addr, 5) for _ in range(300)]
    t0 = time.monotonic()
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    c.sendall(b"beside them")
    assert rep == 0 and helpers.recv_exact(c, 11) == b"beside them"
    assert time.monotonic() - t0 < 1.0
    c.close()
    for x in silent:
        x.settimeout(8)
        assert x.recv(10) == b""             # closed by the negotiate timeout
        x.close()
    assert time.monotonic() - t0 < 8
    s.wait_log("timed-out -- negotiation with 127.0.0.1 took too long")
    no_bugs_logged(s)


def garbage(rng):
    """Random and truncated SOCKS messages."""
    greeting = b"\x05\x02\x00\x02"
    req5 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    req4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00"
    req4a = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00host.example\x00"
    pick = rng.randrange(9)
    if pick == 0:
        return rng.randbytes(rng.randrange(1, 600))
    if pick == 1:
        return greeting[:rng.randrange(1, len(greeting))]
    if pick == 2:
        return greeting + req5[:rng.randrange(1, len(req5))]
    if pick == 3:
        return req4[:rng.randrange(1, len(req4))]
    if pick == 4:
        return req4a[:rng.randrange(1, len(req4a))]
    if pick == 5:
        return b"\x05" + bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(300))
    if pick == 6:
        return greeting + b"\x05" + bytes([rng.randrange(256), 0, rng.randrange(256)]) + rng.randbytes(40)
    if pick == 7:
        return b"\x04" + rng.randbytes(rng.randrange(1, 1200))
    return greeting + b"\x01" + bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(300))


@pytest.mark.serial                     # a flood
def test_garbage_flood_leaves_the_server_serving(start_sockd, echo_server, model):
    s = start_sockd("timeout negotiate 2\ntimeout connect 2\n" + LOCAL, model=model, workers=2)
    before = s.wait_workers(2) if model == "threads" else None
    failures = []

    def client(seed):
        rng = random.Random(seed)
        for _ in range(75):
            try:
                c = socket.create_connection(s.addr, 5)
                c.settimeout(0.1)                         # waits are most of this test's time
                c.sendall(garbage(rng))
                how = rng.randrange(3)
                if how:                                   # half-close, or just wait a little
                    if how == 1:
                        c.shutdown(socket.SHUT_WR)
                    try:
                        while c.recv(4096):
                            pass
                    except (socket.timeout, OSError):
                        pass
                c.close()                                 # or hang up at once
            except OSError as exc:
                failures.append(exc)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(failures) < 15, failures[:5]            # 1,500 connections, a few may meet a full backlog
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    c.sendall(b"still here")
    assert rep == 0 and helpers.recv_exact(c, 10) == b"still here"
    if before is not None:
        assert sorted(s.worker_pids()) == before          # no worker died
    no_bugs_logged(s)


# --- faults -----------------------------------------------------------------------------------

@pytest.mark.serial                     # the replacement timed
def test_killed_worker_is_replaced_and_the_others_clients_do_not_notice(start_sockd, echo_server):
    need("ss")
    s = start_sockd(LOCAL, workers=2)
    workers = s.wait_workers(2)
    conns = {}
    for worker, other in (workers, workers[::-1]):  # one live session on each worker
        with helpers.paused(other):
            c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        assert rep == 0 and owner_of(s.port, c.getsockname()[1]) == worker
        conns[worker] = c
    victim, survivor = workers
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    new = helpers.wait_for(lambda: len(s.worker_pids()) == 2 and victim not in s.worker_pids()
                           and s.worker_pids(), 2, interval=0.01, what="a replacement")
    assert time.monotonic() - t0 < 1.0
    c = conns[survivor]
    c.sendall(b"unaffected")
    assert helpers.recv_exact(c, 10) == b"unaffected"
    assert survivor in new
    d, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 0


def owner_of(listen_port, client_port):
    """The sockd process holding the server side of a client connection."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "( sport = :%d and dport = :%d )"
                          % (listen_port, client_port)], capture_output=True, text=True).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None



@pytest.mark.serial                     # a timeout waited out and timed
def test_refused_and_slow_destinations(start_sockd, model):
    s = start_sockd("timeout connect 1\n" + LOCAL, model=model)
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", helpers.closed_port())
    assert rep == 5
    # a destination that never answers: its accept queue is full, SYNs go unanswered
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    codes = []                                  # SOCKS 4 meanwhile: its timeout need not be waited out again
    four = threading.Thread(target=lambda: codes.append(helpers.socks4_connect(s.addr, "127.0.0.1",
                                                                               full.getsockname()[1])[1]))
    four.start()
    t0 = time.monotonic()
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", full.getsockname()[1])
    assert rep == 6 and 0.8 < time.monotonic() - t0 < 4           # TTL expired: no answer in time
    four.join(10)
    assert codes == [91]
    s.wait_log("timed-out -- Connect from")
    for f in fillers:
        f.close()
    full.close()


CLIENT = r'''
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 10)
s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(sys.argv[2]) + struct.pack("!H", 80))
r = b""
while len(r) < 12:
    c = s.recv(12 - len(r))
    if not c: break
    r += c
print(r[3])
'''


@pytest.fixture
def netns():
    """A network namespace with only loopback up: destinations elsewhere are
    unreachable without a packet leaving the machine."""
    with helpers.network_namespace(setup=[["ip", "route", "add", "unreachable", "10.9.9.0/24"]]) as (name, _):
        yield name


def test_unreachable_destinations(start_sockd, netns):
    s = start_sockd("permit 127.0.0.0/8\n", prefix=["ip", "netns", "exec", netns])
    for dst, rep in (("10.1.2.3", 3), ("10.9.9.9", 4)):           # no route; an unreachable route
        r = subprocess.run(["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", CLIENT, str(s.port), dst],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == str(rep), r.stderr
    s.wait_log("Error code: connect Network is unreachable")
    s.wait_log("Error code: connect No route to host")


def worker_fds(s, kind=None):
    """The descriptors the workers hold (helpers.fds_of)."""
    return sum(helpers.fds_of(p, kind) for p in s.worker_pids())


def test_client_reset_mid_transfer_frees_everything(start_sockd):
    def sender(conn):
        try:
            while True:
                conn.sendall(b"x" * 65536)
        except OSError:
            pass
    srv = helpers.TCPServer(sender)
    try:
        s = start_sockd(LOCAL, workers=1)
        s.wait_workers(1)
        helpers.greeted(s.addr)         # past its start; then time to close the greeting's socket
        time.sleep(0.3)
        base, base_pipes = worker_fds(s, "socket:"), worker_fds(s, "pipe:")
        for _ in range(5):
            c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port)
            assert rep == 0
            helpers.recv_exact(c, 100000)               # past the first 64 KiB: spliced
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()                                    # RST in the middle of the download
        helpers.wait_for(lambda: worker_fds(s, "socket:") <= base, 10, what="the worker to free its sockets")
        # a pipe that held undelivered bytes is closed with its session; at most
        # the worker's spare pipes (four, empty) stay for the next bulk session
        assert worker_fds(s, "pipe:") <= base_pipes + 2 * 4
        s.wait_log("terminated -- Connect from")
        no_bugs_logged(s)
    finally:
        srv.close()


# --- limits -------------------------------------------------------------------------------------

def test_per_address_limit_and_rate(start_sockd, echo_server, model):
    s = start_sockd("limit per-address 3\n" + LOCAL, model=model, workers=2)
    held = []
    for _ in range(3):
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        assert rep == 0
        held.append(c)
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 1                                       # refused politely: a SOCKS failure reply
    c, code = helpers.socks4_connect(s.addr, "127.0.0.1", echo_server.port)
    assert code == 91
    d, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port, source="127.0.0.2")
    assert rep == 0                                       # another address is not held back
    held[0].close()
    helpers.wait_for(lambda: helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)[1] == 0, 5,
                     interval=0.1, what="room after a client left")
    log = s.log()
    assert "refused -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1" in log
    # logged at most once every 5 seconds per address, whatever process refused
    assert len(re.findall(r"too many clients from 127.0.0.1 \(limit per-address", log)) == 1


def test_rate_limit(start_sockd, echo_server):
    s = start_sockd("limit rate 5/60\n" + LOCAL, workers=2)
    reps = []
    for _ in range(8):
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        reps.append(rep)
        c.close()
    assert reps == [0] * 5 + [1] * 3
    s.wait_log(r"too many new clients from 127.0.0.1 \(limit rate")


def test_total_limit_across_workers(start_sockd, echo_server):
    s = start_sockd("limit clients 4\n" + LOCAL, workers=2)
    held = []
    for i in range(4):
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port, source="127.0.0.%d" % (10 + i))
        assert rep == 0
        held.append(c)
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port, source="127.0.0.20")
    assert rep == 1
    s.wait_log(r"too many clients \(limit clients")


@pytest.mark.serial                     # descriptor exhaustion; the paused worker's CPU measured
def test_out_of_descriptors_then_serving_again(tmp_path, echo_server):
    """With 64 descriptors: a flood of clients that hold them fills sockd up;
    accept fails with EMFILE, which pauses accepting (no busy loop, no
    crash) and gives back the relays' spare pipes, and once descriptors
    free up sockd serves again."""
    conf = tmp_path / "s.conf"
    conf.write_text("listen 127.0.0.1:0\n" + LOCAL)
    log = tmp_path / "s.log"
    with open(log, "wb") as lf:
        p = subprocess.Popen([need("prlimit"), "--nofile=64:64", helpers.SOCKD, "-F", "-f", str(conf), "-N", "1"],
                             stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = int(helpers.wait_for(lambda: re.search(r"listening on 127.0.0.1:(\d+)", log.read_text()),
                                    15, what="sockd").group(1))
        worker = helpers.wait_for(lambda: helpers.children_of(p.pid), what="the worker")[0]
        helpers.greeted(("127.0.0.1", port))     # the worker past its start: its own pipes only
        base_pipes = helpers.fds_of(worker, "pipe:")
        c = try_socks(port, echo_server.port)        # a bulk session first: the worker keeps spare pipes
        blob = os.urandom(1 << 20)
        c.sendall(blob)
        assert helpers.recv_exact(c, len(blob)) == blob
        c.close()
        helpers.wait_for(lambda: helpers.fds_of(worker, "pipe:") > base_pipes, 5, what="the worker's spare pipes")
        flood = []
        for _ in range(150):                       # each holds a descriptor while it negotiates
            c = socket.create_connection(("127.0.0.1", port), 2)
            c.sendall(b"\x05\x01\x00")
            flood.append(c)
        helpers.wait_for(lambda: "pausing new connections" in log.read_text(), 10, what="the EMFILE line")
        assert helpers.fds_of(worker, "pipe:") == base_pipes       # the spare ones given back to the clients
        cpu0, t0 = cpu_seconds(worker), time.monotonic()
        assert try_socks(port, echo_server.port) is None   # no room for another client now (its 2 s count)
        time.sleep(max(0.0, t0 + 2 - time.monotonic()))
        assert cpu_seconds(worker) - cpu0 < 0.5     # paused, not spinning on accept, for 2 s
        for c in flood:
            c.close()
        c = helpers.wait_for(lambda: try_socks(port, echo_server.port), 15, interval=0.2,
                             what="serving again")
        c.sendall(b"again")
        assert helpers.recv_exact(c, 5) == b"again"
        c.close()                                   # or the SIGTERM below waits out timeout shutdown
        assert p.poll() is None and worker in helpers.children_of(p.pid)
        text = log.read_text()
        assert "Traceback" not in text
        assert text.count("pausing new connections") < 5      # logged, not in a loop
    finally:
        helpers.kill_pid(p)


def cpu_seconds(pid):
    f = helpers.proc_stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def try_socks(port, dport):
    try:
        c, rep, _ = helpers.socks5_connect(("127.0.0.1", port), "127.0.0.1", dport, timeout=2)
        return c if rep == 0 else None
    except (OSError, AssertionError, EOFError):
        return None


# --- integrity -------------------------------------------------------------------------------------

def transfer_handler(conn):
    """Read an 8-byte size and then the upload until EOF; answer the upload's
    SHA-256 and that many bytes of data seeded by the size, then close."""
    head = helpers.recv_exact(conn, 8)
    down = struct.unpack("!Q", head)[0]
    conn.sendall(helpers.sha256_until_eof(conn).encode() + random.Random(down).randbytes(down))


@pytest.mark.serial                     # 200 transfers at once
def test_concurrent_transfers_arrive_intact(start_sockd, model):
    srv = helpers.TCPServer(transfer_handler)
    try:
        s = start_sockd(LOCAL, model=model, workers=2)
        rng = random.Random(7)
        jobs = [(rng.randrange(0, 300000), rng.randrange(0, 300000)) for _ in range(200)]
        bad = []

        def one(up, down):
            try:
                c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port, timeout=60)
                assert rep == 0
                payload = os.urandom(up)
                c.sendall(struct.pack("!Q", down) + payload)
                c.shutdown(socket.SHUT_WR)                 # half-close: the answer comes after
                got = helpers.recv_all(c)
                c.close()
                if got[:64].decode() != hashlib.sha256(payload).hexdigest() or \
                        got[64:] != random.Random(down).randbytes(down):
                    bad.append((up, down, len(got)))
            except Exception as exc:                       # collected, reported below
                bad.append(repr(exc))
        threads = [threading.Thread(target=one, args=j) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert bad == []
        no_bugs_logged(s)
    finally:
        srv.close()


@pytest.mark.serial                     # 20 downloads at once
def test_twenty_parallel_mebibyte_downloads(start_sockd):
    blob = os.urandom(1 << 20)
    digest = hashlib.sha256(blob).hexdigest()
    srv = helpers.TCPServer(lambda conn: conn.sendall(blob))
    try:
        s = start_sockd(LOCAL, workers=2)
        results = []

        def one():
            c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port, timeout=60)
            results.append(hashlib.sha256(helpers.recv_all(c)).hexdigest())
        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [digest] * 20
    finally:
        srv.close()


# --- churn -------------------------------------------------------------------------------------------

@pytest.mark.serial                     # churn at full rate
def test_connection_churn(start_sockd, tmp_path):
    """More short connections in a row, at full rate, than there are
    ephemeral ports (10,000 more), none failing; no TIME_WAIT piles up on
    sockd's side, or its outgoing connections would have run out of ports.
    In a network namespace of its own, whose range of ephemeral ports is
    2,000 wide (the host's is about 28,000): the same 10,000 more, and
    the range run through six times, in a third of the connections."""
    gcc = need("gcc")
    need("ss")
    exe = str(tmp_path / "loadgen")
    subprocess.run([gcc, "-O2", "-pthread", "-o", exe, os.path.join(helpers.ROOT, "bench", "loadgen.c")],
                   check=True)
    with helpers.network_namespace("churn") as (ns, ip):
        inside = [ip, "netns", "exec", ns]
        subprocess.run(inside + ["sh", "-c", "echo 40000 41999 > /proc/sys/net/ipv4/ip_local_port_range"],
                       check=True)
        low, high = map(int, subprocess.run(inside + ["cat", "/proc/sys/net/ipv4/ip_local_port_range"],
                                            capture_output=True, text=True, check=True).stdout.split())
        assert (low, high) == (40000, 41999)
        n = high - low + 1 + 10000
        target = subprocess.Popen(inside + [exe, "target"], stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        try:
            tport = int(target.stdout.readline().split("=")[1])
            s = start_sockd(LOCAL, workers=2, prefix=inside)
            r = subprocess.run(inside + [exe, "rate", str(s.port), str(tport), "8", "120", str(n)],
                               capture_output=True, text=True, timeout=300)
            m = dict(kv.split("=") for kv in r.stdout.split()[1:])
            assert int(m["ok"]) == n and int(m["errors"]) == 0, r.stdout + r.stderr
            tw = subprocess.run(inside + ["ss", "-Htan", "state", "time-wait", "( sport = :%d )" % s.port],
                                capture_output=True, text=True).stdout.count("\n")
            assert tw < 1000, tw
            no_bugs_logged(s)
            s.stop()                                     # before its namespace goes
        finally:
            helpers.kill_pid(target)


# --- safe defaults ------------------------------------------------------------------------------

def test_private_destinations_need_a_rule_that_names_them(start_sockd, echo_server):
    s = start_sockd("deny-private-destinations yes\npermit 127.0.0.0/8 127.0.0.2/32\npermit 127.0.0.0/8\n")
    # a destination of 0/0 (the last line) does not reach this host's loopback...
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 2
    # ... nor does a name that resolves there
    c, rep, _ = helpers.socks5_connect(s.addr, "localhost", echo_server.port)
    assert rep == 2
    s.wait_log(r"refused -- Connect from .* to localhost \(\d+\): 127.0.0.1 is private to this host "
               r"\(deny-private-destinations\)")
    # a rule that names the address lets it through
    named = helpers.TCPServer(helpers.echo_handler, host="127.0.0.2")
    try:
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.2", named.port)
        assert rep == 0
        # and datagrams follow the same rule
        c = socket.create_connection(s.addr, 5)
        c.sendall(b"\x05\x01\x00\x05\x03\x00\x01" + bytes(6))
        helpers.recv_exact(c, 2)
        head = helpers.recv_exact(c, 10)
        relay = (socket.inet_ntoa(head[4:8]), struct.unpack("!H", head[8:10])[0])
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(1)
        u.sendto(b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 9) + b"x", relay)
        s.wait_log(r"refused -- UDP associate .*: datagram to 127.0.0.1 \(9\) .*dropped")
    finally:
        named.close()


def test_verify_warns_about_open_proxies_and_files_that_permit_nothing(tmp_path):
    conf = tmp_path / "open.conf"
    conf.write_text("listen 0.0.0.0:1080\npermit 0.0.0.0 0.0.0.0\n")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0 and "open.conf:2: warning: this line permits any client on 0.0.0.0:1080: " \
                                 "an open proxy" in r.stderr
    conf.write_text("listen 127.0.0.1:1080\ndeny 0.0.0.0 0.0.0.0\n")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(conf)], capture_output=True, text=True)
    assert "warning: no permit line: every request will be refused" in r.stderr
    shipped = os.path.join(helpers.ROOT, "etc", "sockd.conf")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", shipped], capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in r.stderr       # loopback only: nothing to warn about
