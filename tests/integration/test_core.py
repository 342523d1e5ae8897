"""sockd end to end, against a real sockd process, in both process models:
curl and PySocks through it, refusals, half-close, bulk data, log lines."""

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import helpers
from helpers import need

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\npermit ::1/128\n"


def curl(proxy, url, *extra):
    exe = need("curl")
    return subprocess.run([exe, "-sS", "--max-time", "10", "-x", proxy, url] + list(extra),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("scheme", ["socks4", "socks4a", "socks5", "socks5h"])
def test_curl_fetches_through_sockd(start_sockd, www, model, scheme):
    s = start_sockd(PERMIT_LOCAL, model=model, workers=2)
    for host in ("127.0.0.1", "localhost"):
        r = curl("%s://127.0.0.1:%d" % (scheme, s.port), www.url("hello.txt", host))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello through sockd\n"
    log = s.wait_log(r"terminated -- .* bytes from")
    assert log
    text = s.log()
    assert re.search(r"sockd\[\d+\]: connected -- Connect from .*\(unknown\)@127\.0\.0\.1 to "
                     r"(127\.0\.0\.1|localhost) \(%d\)" % www.port, text)
    if scheme in ("socks4a", "socks5h"):
        assert "to localhost (%d)" % www.port in text     # the name went to sockd


@pytest.mark.parametrize("splice", ["yes", "no"])
def test_curl_downloads_a_large_file_intact(start_sockd, www, model, tmp_path, splice):
    """32 MiB over HTTP through sockd, spliced past the first 64 KiB or
    copied (relay splice), in either process model: every byte as served,
    and the log's count of them."""
    blob = os.urandom(32 << 20)
    (tmp_path / "www" / "big.bin").write_bytes(blob)
    s = start_sockd("relay splice %s\n" % splice + PERMIT_LOCAL, model=model, workers=2)
    out = tmp_path / "got.bin"
    r = curl("socks5h://127.0.0.1:%d" % s.port, www.url("big.bin"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(blob).digest()
    m = s.wait_log(r"terminated -- .* (\d+) bytes from [^,]+, (\d+) bytes from")
    assert len(blob) < int(m.group(2)) < len(blob) + 4096     # the file and the response's head
    assert "Traceback" not in s.log()


def test_deny_line_makes_curl_fail_97(start_sockd, www, model):
    conf = "listen 127.0.0.1:0\ndeny 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq %d\n" % www.port \
        + PERMIT_LOCAL
    s = start_sockd(conf, model=model)
    for scheme in ("socks4", "socks5"):
        r = curl("%s://127.0.0.1:%d" % (scheme, s.port), www.url("hello.txt"))
        assert r.returncode == 97, (r.returncode, r.stderr)
    line = s.wait_log(r"refused -- Connect from .* by .*sockd\d\.conf:2")
    assert line


def test_no_matching_rule_refuses(start_sockd, www):
    s = start_sockd("permit 10.0.0.0 255.0.0.0\n")
    sock, code = helpers.socks4_connect(s.addr, "127.0.0.1", www.port, "joe")
    assert code == 91
    assert sock.recv(10) == b""
    s.wait_log(r"refused -- Connect from joe\(unknown\)@127.0.0.1 to 127.0.0.1 \(\d+\): no matching rule")


def test_pysocks(start_sockd, echo_server, model):
    import socks
    s = start_sockd(PERMIT_LOCAL, model=model)
    for kind, rdns in ((socks.SOCKS4, False), (socks.SOCKS4, True), (socks.SOCKS5, False), (socks.SOCKS5, True)):
        c = socks.socksocket()
        c.settimeout(10)
        c.set_proxy(kind, "127.0.0.1", s.port, rdns=rdns)
        c.connect(("localhost" if rdns else "127.0.0.1", echo_server.port))
        c.sendall(b"ping %d" % kind)
        assert helpers.recv_exact(c, 6) == b"ping %d" % kind
        c.close()


def test_half_close_is_relayed(start_sockd, model):
    srv = helpers.TCPServer(helpers.hash_handler)
    try:
        s = start_sockd(PERMIT_LOCAL, model=model)
        for v in (4, 5):
            if v == 4:
                c, code = helpers.socks4_connect(s.addr, "127.0.0.1", srv.port)
                assert code == 90
            else:
                c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port)
                assert rep == 0
            payload = b"question %d" % v
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)          # the server answers only after our EOF
            assert helpers.recv_all(c).decode() == hashlib.sha256(payload).hexdigest()
            c.close()
    finally:
        srv.close()


def test_one_mebibyte_each_way(start_sockd, echo_server, model):
    s = start_sockd(PERMIT_LOCAL, model=model)
    data = os.urandom(1 << 20)
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 0
    got = []

    def reader():
        n = 0
        while n < len(data):
            chunk = c.recv(65536)
            if not chunk:
                break
            got.append(chunk)
            n += len(chunk)
    t = threading.Thread(target=reader)
    t.start()
    c.sendall(data)
    t.join(30)
    c.close()
    assert hashlib.sha256(b"".join(got)).hexdigest() == hashlib.sha256(data).hexdigest()
    s.wait_log(r"terminated -- .* 1048576 bytes from 127.0.0.1, 1048576 bytes from 127.0.0.1")


def test_early_data_and_ipv6_destination(start_sockd):
    v6 = helpers.TCPServer(helpers.echo_handler, host="::1")
    try:
        s = start_sockd(PERMIT_LOCAL)
        c, rep, bound = helpers.socks5_connect(s.addr, "::1", v6.port, early=b"sent-with-request")
        assert rep == 0 and len(bound) == 18
        assert helpers.recv_exact(c, 17) == b"sent-with-request"
        c.close()
    finally:
        v6.close()



def test_failure_replies_name_the_cause(start_sockd, model):
    s = start_sockd(PERMIT_LOCAL, model=model)
    port = helpers.closed_port()
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", port)
    assert rep == 5                                   # connection refused
    c, code = helpers.socks4_connect(s.addr, "127.0.0.1", port)
    assert code == 91
    s.wait_log(r"failed -- Connect from .* to 127.0.0.1 \(\d+\).  Error code: connect Connection refused")
    c, rep, _ = helpers.socks5_connect(s.addr, "no-such-host.invalid", 80)
    assert rep == 4                                   # host unreachable
    # unsupported command and address type
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    assert helpers.recv_exact(c, 3)[1] == 7
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00\x05\x01\x00\x09\x00")
    helpers.recv_exact(c, 2)
    assert helpers.recv_exact(c, 3)[1] == 8


def test_hostile_input_then_still_serving(start_sockd, echo_server, model):
    s = start_sockd(PERMIT_LOCAL, model=model, workers=1)
    bad = [b"GET / HTTP/1.1\r\n\r\n", b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"A" * 600,
           b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 600, b"\x05\x00", b"\x05\xff" + bytes(255),
           b"\x04\x07\x00\x00", b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", b"\x00" * 100]
    for payload in bad:
        c = socket.create_connection(s.addr, 5)
        c.settimeout(1)         # a valid start (255 methods) is waited on: see it unanswered, then move on
        c.sendall(payload)
        try:
            helpers.recv_all(c)
        except OSError:
            pass
        c.close()
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 0
    c.sendall(b"alive")
    assert helpers.recv_exact(c, 5) == b"alive"
    s.wait_log(re.escape("error -- wrong version (0x47) from host 127.0.0.1"))
    assert "Traceback" not in s.log() and "internal error" not in s.log()


@pytest.mark.serial
def test_negotiate_timeout_closes_silent_clients(start_sockd):
    s = start_sockd("timeout negotiate 1\n" + PERMIT_LOCAL)
    c = socket.create_connection(s.addr, 5)
    t0 = time.monotonic()
    assert c.recv(10) == b""
    assert 0.8 < time.monotonic() - t0 < 4
    s.wait_log("timed-out -- negotiation with 127.0.0.1")


def test_syslog_lines(start_sockd, tmp_path, echo_server):
    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(5)
    try:
        s = start_sockd("log socket %s\nlog facility local2\n%s" % (path, PERMIT_LOCAL))
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        c.close()
        lines = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("terminated --" in x for x in lines):
            lines.append(sink.recv(4096).decode())
        pri = (16 + 2) * 8 + 5                       # local2.notice
        assert any(re.match(r"<%d>\w{3} [ \d]\d \d\d:\d\d:\d\d sockd\[\d+\]: connected -- Connect from "
                            r"unknown\(unknown\)@127.0.0.1 to 127.0.0.1" % pri, x) for x in lines), lines
        assert any("terminated --" in x for x in lines)
    finally:
        sink.close()


def test_workers_and_replacement(start_sockd, echo_server):
    s = start_sockd(PERMIT_LOCAL, workers=2)
    pids = s.wait_workers(2)
    os.kill(pids[0], signal.SIGKILL)
    helpers.wait_for(lambda: len(s.worker_pids()) == 2 and pids[0] not in s.worker_pids(), 5,
                     what="a replacement worker")
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    assert rep == 0


def test_sigterm_exits_zero(start_sockd):
    s = start_sockd(PERMIT_LOCAL, workers=2)
    assert s.stop() == 0


def test_fork_model_forks_a_child_per_client(start_sockd, echo_server):
    s = start_sockd(PERMIT_LOCAL, model="fork")
    conns = []
    for _ in range(3):
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        assert rep == 0
        conns.append(c)
    helpers.wait_for(lambda: len(s.worker_pids()) == 3, what="three children")
    for c in conns:
        c.close()
    helpers.wait_for(lambda: not s.worker_pids(), what="children to leave")


def test_verify_lists_every_problem(tmp_path):
    conf = tmp_path / "broken.conf"
    conf.write_text("listen 127.0.0.1:1080\npermit 10.0.0.0\npermit 0/0 eq nosuchservice\n"
                    "frobnicate\npermit 0/0\n")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith(str(conf))]
    assert [x.split(":")[1] for x in lines] == ["2", "3", "4"]
    good = tmp_path / "good.conf"
    good.write_text("listen 127.0.0.1:1080\npermit 0/0\n")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # a broken file also stops the server from starting, with the same lines
    r = subprocess.run([helpers.SOCKD, "-F", "-f", str(conf)], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and "broken.conf:2:" in r.stderr


def test_version_flags():
    for flag in ("-ver", "--version"):
        r = subprocess.run([helpers.SOCKD, flag], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("sockd ")


def test_bad_flag_is_a_usage_error_not_a_traceback():
    r = subprocess.run([helpers.SOCKD, "-m", "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
