"""GSS-API (RFC 1961) in sockd, against a real MIT realm (gsskit.Realm) and
real clients: Dante's GSS-API socksify at levels 0, 1 and 2, the patched
curl (level 0, RFC 1961 and NEC), stock curl behind the eager shim (its
context completes; it cannot make a request), and Dante's own GSS-API
server as the reference, with the same client against both.  Bulk data is
relayed byte for byte at levels 1 and 2 (SHA-256 both ways); a recording
relay shows that level 2 leaves no plaintext on the wire.  And the hostile
side: a stalled or garbage token stream costs only its own client."""

import hashlib
import socket
import subprocess
import time

import pytest

import gsskit
import helpers

PAGE = "hello through sockd\n"          # the www fixture's hello.txt
NEEDLES = (b"GET /hello.txt", PAGE.encode())
PYTHON3 = "/usr/bin/python3"            # dynamically linked: Dante's socksify preloads into it


def conf(realm, extra="", methods="gssapi", rules="permit 127.0.0.0/8 127.0.0.0/8\n"):
    return "methods %s\ngssapi keytab %s\n%s%s" % (methods, realm.keytab, extra, rules)


@pytest.fixture
def gss_sockd(start_sockd, krb5_realm):
    """gss_sockd(extra="", **kw) -> helpers.Sockd with methods gssapi on the
    session's realm (its environment: KRB5_CONFIG, the keytab, the replay
    cache in the realm's directory)."""
    gsskit.need_python_gssapi()

    def start(extra="", methods="gssapi", rules="permit 127.0.0.0/8 127.0.0.0/8\n", **kw):
        return start_sockd(conf(krb5_realm, extra, methods, rules), env=krb5_realm.env(), **kw)
    return start


def fetch(www, path="hello.txt"):
    return ["curl", "-sS", "--max-time", "10", www.url(path)]


def alice(realm):
    return realm.env(ccache=realm.ticket("alice"))


def connected_line(level, user="alice@SOCKS.TEST"):
    return r"connected -- Connect from gssapi/%s%%%s\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1" % (
        gsskit.level_name(level), user.replace(".", r"\."))


# --- the reference client at every level, against sockd and Dante ----------------------

@pytest.mark.parametrize("level", [0, 1, 2])
def test_socksify_fetches_a_page_through_sockd_at_each_level(krb5_realm, gss_sockd, www, tmp_path, level):
    s = gss_sockd()
    r = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=level)
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr
    s.wait_log(connected_line(level))
    s.wait_log(r"authenticated -- GSS-API alice@SOCKS\.TEST from 127\.0\.0\.1 for rcmd/localhost@SOCKS\.TEST; "
               r"protection %s" % gsskit.level_name(level))
    line = s.wait_log(r"terminated -- Connect from gssapi/%s.*" % gsskit.level_name(level)).group(0)
    assert ("on the wire" in line) == (level > 0)


def test_the_fork_model_serves_gssapi_too(krb5_realm, gss_sockd, www, tmp_path):
    s = gss_sockd(model="fork")
    for level in (0, 2):
        r = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=level)
        assert r.returncode == 0 and r.stdout == PAGE, r.stderr
        s.wait_log(connected_line(level))


@pytest.mark.parametrize("server", ["sockd", "danted"])
@pytest.mark.parametrize("cache", ["missing", "expired"])
def test_no_valid_ticket_is_refused_by_both(krb5_realm, gss_sockd, start_danted_gss, www, tmp_path, cache, server):
    ccache = (krb5_realm.missing_ccache() if cache == "missing"
              else krb5_realm.expired_ccache(tmp_path / "expired.ccache"))
    srv = gss_sockd() if server == "sockd" else start_danted_gss()
    r = gsskit.socksify(fetch(www), srv.port, krb5_realm.env(ccache=ccache), tmp_path, level=2)
    assert r.returncode == 7 and r.stdout == "", r.stdout + r.stderr
    assert "gss_init_sec_context() failed" in r.stderr
    time.sleep(0.3)
    assert "connected --" not in srv.log() and "tcp/connect [" not in srv.log()


@pytest.mark.parametrize("server", ["sockd", "danted"])
def test_a_service_name_the_server_does_not_accept_is_refused_by_both(krb5_realm, gss_sockd, start_danted_gss,
                                                                       www, tmp_path, server):
    # the client asks for socks/localhost; both servers accept rcmd only
    srv = gss_sockd() if server == "sockd" else start_danted_gss(servicename="rcmd/localhost")
    r = gsskit.socksify(fetch(www), srv.port, alice(krb5_realm), tmp_path, level=1, servicename="socks")
    assert r.returncode != 0 and r.stdout == "", r.stderr
    if server == "sockd":
        s = srv
        s.wait_log(r"refused -- GSS-API authentication of unknown from 127\.0\.0\.1: the client asked for the "
                   r"service socks/localhost@SOCKS\.TEST, not one of gssapi service \(rcmd\)")
        # and with that service allowed, the same client gets through
        s2 = gss_sockd("gssapi service rcmd socks\n", name="s2")
        ok = gsskit.socksify(fetch(www), s2.port, alice(krb5_realm), tmp_path, level=1, servicename="socks")
        assert ok.returncode == 0 and ok.stdout == PAGE, ok.stderr


def test_a_rule_naming_alice_lets_her_through_and_refuses_bob(krb5_realm, gss_sockd, www, tmp_path):
    s = gss_sockd(rules="permit *=alice 127.0.0.0/8 127.0.0.0/8\n")
    ok = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=1)
    assert ok.returncode == 0 and ok.stdout == PAGE, ok.stderr
    no = gsskit.socksify(fetch(www), s.port, krb5_realm.env(ccache=krb5_realm.ticket("bob")), tmp_path, level=1)
    assert no.returncode != 0 and no.stdout == "", no.stderr
    s.wait_log(connected_line(1))
    s.wait_log(r"refused -- Connect from gssapi/integrity%bob@SOCKS\.TEST\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 "
               r"\(\d+\).* no match")


def test_a_rule_can_require_gssapi_and_the_shell_sees_the_principal(krb5_realm, gss_sockd, www, tmp_path):
    out = tmp_path / "who"
    s = gss_sockd(methods="gssapi none",
                  rules="permit method=gssapi *=alice@SOCKS.TEST 127.0.0.0/8 127.0.0.0/8 : echo %%u >> %s\n" % out)
    ok = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=0)
    assert ok.returncode == 0 and ok.stdout == PAGE, ok.stderr
    helpers.wait_for(lambda: out.exists() and out.read_text() == "alice@SOCKS.TEST\n", 5, what="the command's output")
    # the same address without GSS-API (method none) matches no line
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", www.port)
    c.close()
    assert rep == 2
    s.wait_log(r"refused -- Connect from unknown\(unknown\)@127\.0\.0\.1")


# --- curl ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nec", [False, True], ids=["rfc1961", "nec"])
def test_patched_curl_fetches_a_page_at_level_0(krb5_realm, gss_sockd, www, nec):
    s = gss_sockd()
    r = gsskit.curl_fixed(www.url("hello.txt"), s.port, alice(krb5_realm), nec=nec)
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr
    assert "SOCKS5 server authenticated user alice@SOCKS.TEST with GSS-API" in r.stderr
    s.wait_log(connected_line(0))
    s.wait_log(r"(?m)protection clear%s$" % (r" \(NEC variant\)" if nec else ""))


def test_gssapi_nec_no_refuses_the_nec_variant(krb5_realm, gss_sockd, www):
    s = gss_sockd("gssapi nec no\n")
    r = gsskit.curl_fixed(www.url("hello.txt"), s.port, alice(krb5_realm), nec=True)
    assert r.returncode != 0 and r.stdout == ""
    s.wait_log(r"refused -- GSS-API authentication of alice@SOCKS\.TEST from 127\.0\.0\.1: the NEC variant")


def test_a_level_that_gssapi_levels_does_not_grant_is_refused(krb5_realm, gss_sockd, www):
    # curl asks for clear only, and closes when given more
    s = gss_sockd("gssapi levels integrity confidentiality\n")
    r = gsskit.curl_fixed(www.url("hello.txt"), s.port, alice(krb5_realm))
    assert r.returncode != 0 and r.stdout == ""
    s.wait_log(r"authenticated -- GSS-API alice@SOCKS\.TEST .*protection integrity \(asked for clear\)")
    assert "connected --" not in s.log()


def test_stock_curl_establishes_a_context_but_cannot_make_a_request(krb5_realm, gss_sockd, start_eager_shim, www):
    """Stock curl's two bugs (docs/gssapi-testbed.md section 6): behind the
    eager shim it gets through the context and the level; then it gives up
    on its own ("Undocumented SOCKS5 mode").  Judged on sockd's side."""
    s = gss_sockd()
    shim = start_eager_shim(s.port, max_conns=5, lifetime=30)
    for _ in range(5):
        r = gsskit.stock_curl(www.url("hello.txt"), shim.port, alice(krb5_realm))
        assert r.returncode == 97 and r.stdout == ""
        if "authenticated --" in s.log():
            break
    s.wait_log(r"authenticated -- GSS-API alice@SOCKS\.TEST from 127\.0\.0\.1 for rcmd/127\.0\.0\.1@SOCKS\.TEST; "
               r"protection clear")
    assert "connected --" not in s.log()


# --- bulk, byte for byte, and the wire --------------------------------------------------------

BULK = r"""
import hashlib, os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
data = hashlib.sha256(b"up").digest() * (n // 32)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    c = s.recv(1 << 16)
    if not c:
        break
    got += c
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), len(got))
"""


def updown_handler(n):
    """A server that hashes what it is sent and, meanwhile, sends ``n``
    bytes of its own; it closes once both are done."""
    def handle(conn):
        down = hashlib.sha256(b"down").digest() * (n // 32)
        conn.setblocking(True)
        sent = 0
        h = hashlib.sha256()
        conn.settimeout(0.05)
        eof = False
        while not eof or sent < len(down):
            if sent < len(down):
                try:
                    sent += conn.send(down[sent:sent + (1 << 16)])
                except (socket.timeout, BlockingIOError):
                    pass
            if not eof:
                try:
                    c = conn.recv(1 << 16)
                    if not c:
                        eof = True
                    h.update(c)
                except (socket.timeout, BlockingIOError):
                    pass
        handle.up = h.hexdigest()
        conn.close()
    return handle


@pytest.mark.parametrize("server", ["sockd", "danted"])
@pytest.mark.parametrize("level", [1, 2])
def test_16_mib_each_way_arrive_byte_for_byte(krb5_realm, gss_sockd, start_danted_gss, tmp_path, level, server):
    n = 16 << 20
    handler = updown_handler(n)
    target = helpers.TCPServer(handler)
    try:
        srv = gss_sockd() if server == "sockd" else start_danted_gss()
        script = tmp_path / "bulk.py"
        script.write_text(BULK)
        for _ in range(3 if server == "danted" else 1):
            handler.up = None
            r = gsskit.socksify([PYTHON3, str(script), str(target.port), str(n)], srv.port, alice(krb5_realm),
                                tmp_path, level=level, timeout=120)
            # Dante's own client against Dante's server, both ways at once at
            # level 2, now and then misreads a frame under load ("invalid socks
            # gssapi header" in gssapi_decode_read): the reference pair's bug,
            # not sockd's; that pair is given three tries
            if r.returncode == 0 or "invalid socks gssapi header" not in r.stderr:
                break
        assert r.returncode == 0, r.stderr[-2000:]
        sent_up, got_down, length = r.stdout.split()
        assert int(length) == n
        assert got_down == hashlib.sha256(hashlib.sha256(b"down").digest() * (n // 32)).hexdigest()
        helpers.wait_for(lambda: getattr(handler, "up", None), 10, what="the target's hash")
        assert handler.up == sent_up
    finally:
        target.close()
    if server == "sockd":
        line = srv.wait_log(r"terminated -- .*").group(0)
        assert "%d bytes from 127.0.0.1, %d bytes from 127.0.0.1 (on the wire" % (n, n) in line


@pytest.mark.parametrize("level, plaintext", [(1, True), (2, False)])
def test_the_wire_shows_plaintext_at_level_1_and_none_at_level_2(krb5_realm, gss_sockd, start_tap, www, tmp_path,
                                                                 level, plaintext):
    s = gss_sockd()
    tap = start_tap(s.port, max_sessions=2, lifetime=30)
    r = gsskit.socksify(fetch(www), tap.port, alice(krb5_realm), tmp_path, level=level)
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr
    sess = tap.session(1)
    assert sess.c2s.head == b"\x05\x01\x01" and sess.s2c.head == b"\x05\x01"
    assert [f.mtyp for f in sess.c2s.frames][:2] == [1, 2]
    assert all(f.mtyp == 3 for f in sess.c2s.frames[2:]) and len(sess.c2s.frames) >= 4
    assert all(f.mtyp == 3 for f in sess.s2c.frames[2:]) and len(sess.s2c.frames) >= 4
    assert sess.c2s.tail == b"" and sess.s2c.tail == b""        # nothing outside a frame
    found = sess.plaintext(NEEDLES)
    assert bool(found) is plaintext, gsskit.describe(sess)
    if plaintext:
        assert ("c2s", "frame 3 (mtyp 3)") in found or any(d == "c2s" for d, _ in found)


# --- hostile clients -------------------------------------------------------------------------

def raw_gss(addr, timeout=5):
    c = socket.create_connection(addr, timeout=timeout)
    c.sendall(b"\x05\x01\x01")
    assert helpers.recv_exact(c, 2) == b"\x05\x01"
    return c


def test_a_token_that_is_no_token_gets_the_abort(krb5_realm, gss_sockd):
    s = gss_sockd()
    c = raw_gss(s.addr)
    c.sendall(b"\x01\x01\x00\x05hello")
    assert helpers.recv_all(c) == b"\x01\xff"
    s.wait_log(r"refused -- GSS-API authentication of unknown from 127\.0\.0\.1: .*[Ii]nvalid token")
    c = raw_gss(s.addr)
    c.sendall(b"\x01\x02\x00\x01\x02")            # a level before any context
    assert helpers.recv_all(c) == b"\x01\xff"
    s.wait_log(r"a frame of type 2 before the context was established")
    c = raw_gss(s.addr)
    c.sendall(b"\x02\x01\x00\x00")                # not version 1
    assert helpers.recv_all(c) == b""
    s.wait_log(r"error -- GSS-API frame of version 2, not 1 from host 127\.0\.0\.1")


@pytest.mark.serial
def test_a_stalled_token_stream_costs_only_its_own_client(krb5_realm, gss_sockd, www, tmp_path):
    s = gss_sockd("timeout negotiate 3\n", workers=1)
    stalled = []
    for _ in range(8):
        c = raw_gss(s.addr)
        c.sendall(b"\x01\x01\xff\xff" + b"\x60" * 100)     # promises 65535 bytes, sends 100
        stalled.append(c)
    t0 = time.monotonic()
    r = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=2)
    took = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr
    assert took < 2.5, "a real client waited %.1f s behind stalled ones" % took
    for c in stalled:
        c.settimeout(8)
        assert helpers.recv_all(c) == b""            # closed by timeout negotiate, not served
    # the worker writes its lines at the end of its turn, after the closes
    helpers.wait_for(lambda: s.log().count("timed-out -- negotiation with 127.0.0.1 took too long") == 8,
                     what="eight timed-out lines")


def test_many_garbage_contexts_at_once_are_bounded_and_others_still_get_in(krb5_realm, gss_sockd, www, tmp_path):
    s = gss_sockd("helpers passwords 2\nhelpers per-address 1\nhelpers queue 4\n", workers=1)
    socks = [raw_gss(s.addr) for _ in range(40)]
    for c in socks:
        c.sendall(b"\x01\x01\x00\x04junk")
    answers = [helpers.recv_all(c) for c in socks]
    assert set(answers) == {b"\x01\xff"}
    r = gsskit.socksify(fetch(www), s.port, alice(krb5_realm), tmp_path, level=1)
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr


# --- without the package ------------------------------------------------------------------------

def test_without_python_gssapi_methods_gssapi_is_a_line_error_that_says_what_to_install(krb5_realm, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    # what a machine without the extra has: the import fails
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['gssapi'] = None\n")
    path = tmp_path / "sockd.conf"
    path.write_text("listen 127.0.0.1:0\n" + conf(krb5_realm))
    env = dict(krb5_realm.env(), PYTHONPATH=str(hide))
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(path)], capture_output=True, text=True, env=env, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    assert "%s:2: 'methods gssapi': the Python package gssapi is not installed: pip install 'sockd[gssapi]'" % path \
        in out, out
    # and with the package, the same file is fine
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(path)], capture_output=True, text=True,
                       env=krb5_realm.env(), timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
