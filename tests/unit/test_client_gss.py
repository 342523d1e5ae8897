"""sockd/client/gss.py, and SOCKS 5 method 1 in the client library
(core._socks5) with a stand-in mechanism (gssfake): the environment's
settings, the service name, which level answers are followed, the frames
of sections 3 and 4 byte by byte, the protected request and reply, and
the refusals in words.  The real mechanism, against sockd and Dante, is
tests/integration/test_client_gssapi.py's."""

import itertools
import os
import socket
import struct
import threading

import pytest

from sockd import gss1961 as G
from sockd.client import core, gss
from sockd.protocol import ProtocolError

import gssfake
from gssfake import FakeCreds, FakeInitiator, fake_protection, fake_unwrap, fake_wrap, frame, read_frame
from clientkit import (LOCAL, TARGET, WAIT, Peer, read_greeting, read_request5, reply5, socksenv, udp_header)

assert socksenv     # the fixture, used by name
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- settings, names, levels (pure) ------------------------------------------------------------

def test_settings_defaults():
    s = gss.settings({})
    assert (s.mode, s.service, s.level) == (gss.AUTO, "rcmd", G.CONFIDENTIALITY)


@pytest.mark.parametrize("env,want", [
    ({"SOCKS_GSSAPI": "no"}, (gss.NO, "rcmd", 2)),
    ({"SOCKS_GSSAPI": " Require "}, (gss.REQUIRE, "rcmd", 2)),
    ({"SOCKS_GSSAPI": "yes"}, (gss.AUTO, "rcmd", 2)),
    ({"SOCKS_GSSAPI": ""}, (gss.AUTO, "rcmd", 2)),
    ({"SOCKS_GSSAPI_SERVICE": "socks"}, (gss.AUTO, "socks", 2)),
    ({"SOCKS_GSSAPI_SERVICE": "rcmd/fw.example.org@EXAMPLE.ORG"}, (gss.AUTO, "rcmd/fw.example.org@EXAMPLE.ORG", 2)),
    ({"SOCKS_GSSAPI_LEVEL": "clear"}, (gss.AUTO, "rcmd", 0)),
    ({"SOCKS_GSSAPI_LEVEL": "Integrity"}, (gss.AUTO, "rcmd", 1)),
    ({"SOCKS_GSSAPI_LEVEL": "2"}, (gss.AUTO, "rcmd", 2)),
    ({"SOCKS_GSSAPI_LEVEL": "0"}, (gss.AUTO, "rcmd", 0)),
])
def test_settings_values(env, want):
    s = gss.settings(env)
    assert (s.mode, s.service, s.level) == want


@pytest.mark.parametrize("env,message", [
    ({"SOCKS_GSSAPI": "maybe"}, "SOCKS_GSSAPI: expected auto, no or require (near 'maybe')"),
    ({"SOCKS_GSSAPI_LEVEL": "3"}, "SOCKS_GSSAPI_LEVEL: expected clear, integrity or confidentiality (near '3')"),
    ({"SOCKS_GSSAPI_LEVEL": "per-message"}, "SOCKS_GSSAPI_LEVEL: expected clear"),
    ({"SOCKS_GSSAPI_SERVICE": "rcmd host"}, "SOCKS_GSSAPI_SERVICE: expected a service name"),
    ({"SOCKS_GSSAPI_SERVICE": "/localhost"}, "SOCKS_GSSAPI_SERVICE: expected a service name"),
    ({"SOCKS_GSSAPI_SERVICE": "@localhost"}, "SOCKS_GSSAPI_SERVICE: expected a service name"),
])
def test_settings_mistakes_name_the_variable(env, message):
    with pytest.raises(ValueError) as ei:
        gss.settings(env)
    assert str(ei.value).startswith(message)


def test_a_mistake_is_a_config_error_at_start_up(socksenv):
    socksenv.set("SOCKS_GSSAPI_LEVEL", "high")
    with pytest.raises(core.SocksConfigError, match="SOCKS_GSSAPI_LEVEL: expected"):
        core.check_config()
    socksenv.set("SOCKS_GSSAPI_LEVEL", "integrity")
    socksenv.set("SOCKS_GSSAPI", "require")
    socksenv.set("SOCKS_VERSION", "4")
    with pytest.raises(core.SocksConfigError, match="SOCKS_GSSAPI=require needs SOCKS 5"):
        core.check_config()


@pytest.mark.parametrize("service,host,want", [
    ("rcmd", "127.0.0.1", ("rcmd@127.0.0.1", True)),          # curl: the proxy as typed
    ("rcmd", "fw.example.org.", ("rcmd@fw.example.org", True)),
    ("socks", "::1", ("socks@::1", True)),
    ("rcmd@localhost", "127.0.0.1", ("rcmd@localhost", True)),  # the host named outright
    ("rcmd/localhost", "127.0.0.1", ("rcmd/localhost", False)),  # a principal, as it is
    ("rcmd/fw@EXAMPLE.ORG", "fw", ("rcmd/fw@EXAMPLE.ORG", False)),
])
def test_the_service_name(service, host, want):
    assert gss.target(service, host) == want


@pytest.mark.parametrize("wanted,got", list(itertools.product(range(3), range(5))))
def test_which_answers_are_followed(wanted, got):
    problem = gss.judge_level(wanted, got)
    if got == wanted or wanted < got <= 2:
        assert problem is None                  # the same, or stronger and spoken here
    elif got >= 3:
        assert "which this client does not speak" in problem
    else:
        assert problem == ("protection level %s, weaker than the %s asked for (SOCKS_GSSAPI_LEVEL)"
                           % (G.level_name(got), G.level_name(wanted)))


# --- frames, the handshake, the protected reply (pure, with scripted I/O) ----------------------

class Wire:
    """recv(n) from scripted bytes, exactly n or EOFError; send records."""

    def __init__(self, data=b""):
        self.data, self.pos, self.sent = data, 0, b""
        self.reads = []

    def recv(self, n):
        if self.pos + n > len(self.data):
            raise EOFError("the server closed the connection")
        self.reads.append(n)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def send(self, data):
        self.sent += data


@pytest.mark.parametrize("wire,want", [
    (b"\x01\x01\x00\x03abc", G.Frame(1, b"abc")),
    (b"\x01\x02\x00\x00", G.Frame(2, b"")),
    (b"\x01\xff", G.ABORTED),
    (b"\x01\x03\x01\x00" + b"x" * 256, G.Frame(3, b"x" * 256)),
])
def test_read_frame_reads_each_frame_to_its_exact_length(wire, want):
    w = Wire(wire + b"NEXT")
    assert gss.read_frame(w.recv) == want
    assert w.data[w.pos:] == b"NEXT"
    assert w.reads[0] == 2              # the abort is two bytes: never ask for more first


@pytest.mark.parametrize("wire", [b"\x05\x01\x00\x00", b"\x01\x07\x00\x00", b"\x00\xff"])
def test_read_frame_refuses_what_is_not_a_frame(wire):
    with pytest.raises(ProtocolError):
        gss.read_frame(Wire(wire).recv)


@pytest.fixture
def fake_init():
    FakeInitiator.rounds, FakeInitiator.fail_at, FakeInitiator.problem = 1, None, None
    FakeInitiator.made = []
    yield FakeInitiator
    FakeInitiator.rounds, FakeInitiator.fail_at, FakeInitiator.problem = 1, None, None


def init_for(fake_init, wanted=G.CONFIDENTIALITY):
    return fake_init(FakeCreds(), "rcmd@fw", True, wanted)


def level_frame(level):
    return frame(2, fake_wrap(bytes((level,))))


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_the_handshake_on_the_wire(fake_init, rounds):
    fake_init.rounds = rounds
    answers = b"".join(frame(1, b"srv-%d" % i) for i in range(1, rounds + 1))
    w = Wire(answers + level_frame(2))
    init = init_for(fake_init)
    assert gss.handshake(init, w.send, w.recv, "fw:1080") == 2
    assert w.sent == b"".join(frame(1, b"ctx-%d" % i) for i in range(1, rounds + 1)) + level_frame(2)
    assert init.seen == [None] + [b"srv-%d" % i for i in range(1, rounds + 1)]
    assert w.pos == len(w.data)


@pytest.mark.parametrize("wanted,granted", [(0, 1), (0, 2), (1, 2), (1, 1)])
def test_a_stronger_or_equal_level_is_followed(fake_init, wanted, granted):
    w = Wire(frame(1, b"srv-1") + level_frame(granted))
    assert gss.handshake(init_for(fake_init, wanted), w.send, w.recv, "fw:1080") == granted
    assert not w.sent.endswith(G.ABORT)


@pytest.mark.parametrize("wanted,granted,text", [
    (2, 1, "answered with protection level integrity, weaker than the confidentiality asked for"),
    (2, 0, "answered with protection level clear, weaker than the confidentiality asked for"),
    (1, 0, "answered with protection level clear, weaker than the integrity asked for"),
    (1, 3, "answered with protection level per-message, which this client does not speak"),
])
def test_a_weaker_level_is_refused_with_the_abort(fake_init, wanted, granted, text):
    w = Wire(frame(1, b"srv-1") + level_frame(granted))
    with pytest.raises(gss.GssRefused) as ei:
        gss.handshake(init_for(fake_init, wanted), w.send, w.recv, "fw:1080")
    assert str(ei.value).startswith("SOCKS server fw:1080 %s" % text) and str(ei.value).endswith(": refused")
    assert w.sent.endswith(G.ABORT)


def test_the_servers_abort_during_the_context(fake_init):
    w = Wire(G.ABORT)
    with pytest.raises(gss.GssRefused) as ei:
        gss.handshake(init_for(fake_init), w.send, w.recv, "fw:1080")
    assert str(ei.value).startswith("SOCKS server fw:1080 refused the GSS-API context of alice@FAKE.TEST "
                                    "for rcmd@fw (it sent the abort")
    assert "SOCKS_GSSAPI_SERVICE" in str(ei.value)
    assert w.sent == frame(1, b"ctx-1")           # nothing after the server's abort


def test_the_servers_abort_of_the_level(fake_init):
    w = Wire(frame(1, b"srv-1") + G.ABORT)
    with pytest.raises(gss.GssRefused) as ei:
        gss.handshake(init_for(fake_init, G.INTEGRITY), w.send, w.recv, "fw:1080")
    assert str(ei.value) == ("SOCKS server fw:1080 refused GSS-API protection level integrity for "
                             "alice@FAKE.TEST; try another SOCKS_GSSAPI_LEVEL (clear, integrity, confidentiality)")


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failing_step_sends_the_abort_and_says_what_to_do(fake_init, fail_at):
    fake_init.fail_at = fail_at
    w = Wire(frame(1, b"srv-1") + level_frame(2))
    with pytest.raises(gss.GssRefused) as ei:
        gss.handshake(init_for(fake_init), w.send, w.recv, "fw:1080")
    assert str(ei.value) == ("SOCKS server fw:1080: GSS-API as alice@FAKE.TEST failed: no Kerberos ticket "
                             "(fake): run kinit")
    assert w.sent.endswith(G.ABORT)


def test_a_context_without_what_the_level_needs_is_aborted(fake_init):
    fake_init.problem = "the GSS-API context did not authenticate the server (no mutual authentication)"
    w = Wire(frame(1, b"srv-1") + level_frame(2))
    with pytest.raises(gss.GssRefused, match="fw:1080: the GSS-API context did not authenticate the server"):
        gss.handshake(init_for(fake_init), w.send, w.recv, "fw:1080")
    assert w.sent == frame(1, b"ctx-1") + G.ABORT


def test_the_context_rounds_are_bounded(fake_init):
    fake_init.rounds = 100
    w = Wire(b"".join(frame(1, b"srv-%d" % i) for i in range(1, 101)))
    with pytest.raises(gss.GssRefused, match="more than 8 GSS-API context tokens"):
        gss.handshake(init_for(fake_init), w.send, w.recv, "fw:1080")
    assert w.sent.endswith(G.ABORT)


@pytest.mark.parametrize("wire", [
    frame(3, b"data"),                                      # data before the context is complete
    frame(1, b"srv-1") + frame(1, b"not the level"),        # a context token where the level belongs
])
def test_frames_out_of_place_are_protocol_errors(fake_init, wire):
    w = Wire(wire)
    with pytest.raises(ProtocolError):
        gss.handshake(init_for(fake_init), w.send, w.recv, "fw:1080")


def test_the_unsealer_reads_a_reply_across_frames_and_keeps_the_rest():
    server = fake_protection(chunk=3)
    w = Wire(server.seal(reply5(0, "10.1.2.3", 99) + b"early data"))
    client = fake_protection()
    u = gss.Unsealer(client, w.recv)
    assert core._read_reply5_with(u.read) == (0, "10.1.2.3", 99)
    assert 0 < len(u.buffer) < 3                # the rest of the frame the reply ended in: kept
    assert u.buffer + client.feed(w.data[w.pos:]) == b"early data"   # and no frame read beyond it


def test_the_unsealer_refuses_an_abort_and_foreign_frames():
    with pytest.raises(gss.GssRefused, match="aborted"):
        gss.Unsealer(fake_protection(), Wire(G.ABORT).recv).read(5)
    with pytest.raises(ProtocolError, match="type 2 where protected data belongs"):
        gss.Unsealer(fake_protection(), Wire(frame(2, b"x")).recv).read(5)
    with pytest.raises(ProtocolError, match="does not unwrap"):
        gss.Unsealer(fake_protection(), Wire(frame(3, b"forged")).recv).read(5)


# --- the edge: what python-gssapi says, in words -----------------------------------------------

class FakeGSSError(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def gen_message(self):
        return self.text


@pytest.mark.parametrize("text,name,want", [
    ("Major (458752): No credentials were supplied, or the credentials were unavailable or inaccessible, "
     "Minor (2529639053): No Kerberos credentials available (default cache: FILE:/tmp/x)", None,
     "no Kerberos ticket (No Kerberos credentials available (default cache: FILE:/tmp/x)): run kinit"),
    ("Major (720896): The referenced credential has expired, Minor (100001): Success", None,
     "your Kerberos ticket has expired (The referenced credential has expired): run kinit"),
    ("Major (851968): Unspecified GSS failure.  Minor code may provide more information, "
     "Minor (2529638944): Ticket expired", None, "your Kerberos ticket has expired (Ticket expired): run kinit"),
    ("Major (851968): Unspecified GSS failure.  Minor code may provide more information, "
     "Minor (2529638919): Server nosuch/fw@R not found in Kerberos database", "nosuch@fw",
     "the KDC knows no service nosuch@fw (Server nosuch/fw@R not found in Kerberos database): set "
     "SOCKS_GSSAPI_SERVICE"),
    ("Major (851968): Unspecified GSS failure.  Minor code may provide more information, "
     "Minor (2529639068): Cannot contact any KDC for realm 'R'", None,
     "the Kerberos KDC cannot be reached (Cannot contact any KDC for realm 'R')"),
    ("something\nelse entirely", None, "something else entirely"),
])
def test_advice_says_what_to_do(monkeypatch, text, name, want):
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    assert gss.advice(FakeGSSError(text), name).startswith(want)


def test_kinit_names_the_ticket_cache_when_one_is_set(monkeypatch):
    monkeypatch.setenv("KRB5CCNAME", "FILE:/tmp/alice.cc")
    assert gss.kinit() == "run kinit (KRB5CCNAME=FILE:/tmp/alice.cc)"


def test_without_python_gssapi_nothing_is_offered_and_the_reason_says_what_to_install(monkeypatch):
    monkeypatch.setattr(gss, "gssapi", None)
    assert gss.probe() == (None, gss.MISSING)
    assert "pip install 'sockd[gssapi]'" in gss.MISSING


def test_probe_without_a_ticket_says_kinit(socksenv):
    if not gss.available():
        if IN_CI:
            pytest.fail("python-gssapi is not installed (make test-deps installs sockd[gssapi])")
        pytest.skip("python-gssapi is not installed")
    creds, why = gss.probe()               # socksenv: KRB5CCNAME names no file
    assert creds is None and why.startswith("no Kerberos ticket (") and "run kinit (KRB5CCNAME=FILE:/nonexistent" in why


# --- method 1 in core._socks5, with the stand-in mechanism ---------------------------------------

@pytest.fixture
def fake_gss(socksenv, monkeypatch, fake_init):
    """Usable (fake) credentials and the fake Initiator in the library."""
    monkeypatch.setattr(gss, "probe", lambda: (FakeCreds(), None))
    monkeypatch.setattr(gss, "Initiator", fake_init)
    return socksenv


@pytest.fixture
def peers():
    started = []

    def start(handler, **kw):
        p = Peer(handler, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        p.close()


def gss_server(grant=None, then=None, seen=None, bound=("10.1.1.1", 4242), rounds=1):
    """A SOCKS 5 server that chooses method 1 (fake mechanism), grants the
    level asked for (or ``grant``), reads the request (protected at levels
    1 and 2) and answers it, then ``then(conn, prot or None)``."""
    def handle(c, peer):
        methods = read_greeting(c)
        c.send(b"\x05\x01")
        level = gssfake.server_handshake(c, rounds=rounds, grant=grant)
        level = level if grant is None else grant
        prot = fake_protection(level, chunk=1000) if level else None
        if prot is None:
            req = read_request5(c)
        else:
            plain = b""
            while len(plain) < 10:
                plain += prot.feed(gssfake.frame(*read_frame(c)))
            req = (plain[1], plain[3], socket.inet_ntoa(plain[4:8]), struct.unpack("!H", plain[8:10])[0])
        if seen is not None:                # before the reply: the client looks as soon as it has it
            seen.append((methods, level, req))
        c.send(reply5(0, *bound) if prot is None else prot.seal(reply5(0, *bound)))
        if then is not None:
            then(c, prot)
    return handle


def echo_protected(c, prot):
    """Echo what comes, opened and sealed again, until end of file; then close."""
    while True:
        data = c.sock.recv(65536)
        if not data:
            break
        c.got += data
        plain = prot.feed(data) if prot else data
        if plain:
            c.send(prot.seal(plain) if prot else plain)
    c.sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_connect_at_each_level(fake_gss, peers, level):
    seen = []
    p = peers(gss_server(seen=seen, then=echo_protected))
    fake_gss.via(p)
    fake_gss.set("SOCKS_GSSAPI_LEVEL", str(level))
    s = core.socksocket()
    s.settimeout(WAIT)
    s.connect((TARGET, 7))
    assert seen == [([0, 1], level, (1, 1, TARGET, 7))]
    assert (s._relay is not None) == (level > 0)
    assert s.getpeername() == (TARGET, 7) and s.getsockname()[0] == LOCAL
    blob = bytes(range(256)) * 40               # more than one token's worth (chunk 1000)
    s.sendall(blob)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < len(blob) + 1:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got == blob                          # byte-exact, then the server's end of file
    s.close()
    wire = p.conns[0].got
    assert (bytes(range(32, 96)) in wire) == (level == 0)    # protected: never the plaintext on the wire


def test_the_servers_early_data_after_the_reply_reaches_the_program(fake_gss, peers):
    # reply and the first data in one frame: the relay must start with what the frame held beyond
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x01")
        gssfake.server_handshake(c)
        prot = fake_protection()
        plain = b""
        while len(plain) < 10:
            plain += prot.feed(gssfake.frame(*read_frame(c)))
        c.send(prot.seal(reply5() + b"hello, early"))
        c.sock.shutdown(socket.SHUT_WR)
        c.read_all()
    p = peers(handle)
    fake_gss.via(p)
    s = core.socksocket()
    s.settimeout(WAIT)
    s.connect((TARGET, 7))
    got = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    assert got == b"hello, early"
    s.close()


def test_the_log_line_names_the_method_level_and_principal(fake_gss, peers, caplog):
    p = peers(gss_server(then=lambda c, prot: c.read_all()))
    fake_gss.via(p)
    s = core.socksocket()
    s.settimeout(WAIT)
    with caplog.at_level("INFO", logger="sockd.client"):
        s.connect((TARGET, 7))
    s.close()
    assert "(SOCKS 5, gssapi/confidentiality as alice@FAKE.TEST)" in caplog.text


def test_the_service_name_uses_the_proxy_as_written(fake_gss, peers):
    p = peers(gss_server(then=lambda c, prot: c.read_all()))
    fake_gss.conf("sockd @=localhost:%d ALL\n" % p.port)
    s = core.socksocket()
    s.settimeout(WAIT)
    s.connect((TARGET, 7))
    s.close()
    fake_gss.set("SOCKS_GSSAPI_SERVICE", "socks/fw.example.org")
    s = core.socksocket()
    s.settimeout(WAIT)
    s.connect((TARGET, 7))
    s.close()
    made = [(i.name, i.hostbased) for i in FakeInitiator.made]
    assert made == [("rcmd@localhost", True), ("socks/fw.example.org", False)]


def test_require_offers_only_gssapi_and_no_socks4(fake_gss, peers):
    seen = []
    p = peers(gss_server(seen=seen, then=lambda c, prot: c.read_all()))
    fake_gss.via(p)
    fake_gss.set("SOCKS_GSSAPI", "require")
    fake_gss.set("SOCKS_USERNAME", "jane")
    fake_gss.set("SOCKS_PASSWORD", "pw")
    s = core.socksocket()
    s.settimeout(WAIT)
    s.connect((TARGET, 7))
    s.close()
    assert seen[0][0] == [1]
    assert core._versions() == (5,)


def test_require_without_a_ticket_refuses_before_asking_a_server(socksenv, peers, monkeypatch):
    monkeypatch.setattr(gss, "probe", lambda: (None, "no Kerberos ticket (fake): run kinit"))
    p = peers(lambda c, peer: c.read_all())
    socksenv.via(p)
    socksenv.set("SOCKS_GSSAPI", "require")
    with pytest.raises(core.SocksRefused) as ei:
        core.socksocket().connect((TARGET, 7))
    assert str(ei.value) == "SOCKS_GSSAPI=require, but GSS-API cannot be used: no Kerberos ticket (fake): run kinit"
    assert ei.value.where == "%s:1" % socksenv.path
    p.close()
    assert p.count == 0


def test_no_offers_nothing_but_the_others(fake_gss, peers):
    got = []

    def handle(c, peer):
        got.append(read_greeting(c))
        c.send(b"\x05\xff")
        c.read_all()
    p = peers(handle)
    fake_gss.via(p)
    fake_gss.set("SOCKS_GSSAPI", "no")
    with pytest.raises(core.SocksRefused) as ei:
        core.socksocket().connect((TARGET, 7))
    assert got == [[0]] and "GSS-API" not in str(ei.value)


def test_a_server_that_wants_gssapi_from_a_user_without_a_ticket(socksenv, peers):
    """No fake here: the real probe, and socksenv's ticket cache that does not exist."""
    got = []

    def handle(c, peer):
        got.append(read_greeting(c))
        c.send(b"\x05\xff")
        c.read_all()
    p = peers(handle)
    socksenv.via(p)
    with pytest.raises(core.SocksRefused) as ei:
        core.socksocket().connect((TARGET, 7))
    assert got == [[0]]
    assert "accepts none of the authentication methods offered" in str(ei.value)
    if gss.available():
        assert "; GSS-API (Kerberos) was not offered: no Kerberos ticket (" in str(ei.value)
        assert str(ei.value).endswith("run kinit (KRB5CCNAME=FILE:/nonexistent/sockd-unit-tests)")
    else:
        assert str(ei.value).endswith(gss.MISSING)


@pytest.mark.parametrize("close_after", [0, 1])
def test_a_server_that_closes_during_the_negotiation(fake_gss, peers, close_after):
    """Dante closes without the abort frame."""
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x01")
        read_frame(c)
        if close_after:
            c.send(frame(1, b"srv-1"))
            read_frame(c)
    p = peers(handle)
    fake_gss.via(p)
    with pytest.raises(core.SocksRefused) as ei:
        core.socksocket().connect((TARGET, 7))
    assert str(ei.value).startswith("SOCKS server %s:%d closed the connection during the GSS-API negotiation "
                                    "for alice@FAKE.TEST (service rcmd@%s, protection level confidentiality)"
                                    % (LOCAL, p.port, LOCAL))


def test_a_refusal_of_the_protected_request_is_in_words(fake_gss, peers):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x01")
        gssfake.server_handshake(c)
        prot = fake_protection()
        read_frame(c)
        c.send(prot.seal(reply5(2)))
        c.read_all()
    p = peers(handle)
    fake_gss.via(p)
    with pytest.raises(core.SocksRefused, match="refused connect to 127.0.0.2 port 7: SOCKS 5 reply 2, "
                                                "connection not allowed by ruleset"):
        core.socksocket().connect((TARGET, 7))


def test_a_forged_reply_frame_is_not_taken(fake_gss, peers):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x01")
        gssfake.server_handshake(c)
        read_frame(c)
        c.send(frame(3, b"X" + reply5()))            # not the mechanism's
        c.read_all()
    p = peers(handle)
    fake_gss.via(p)
    with pytest.raises(core.SocksServerError, match="does not unwrap"):
        core.socksocket().connect((TARGET, 7))


def test_udp_at_level_2_makes_each_datagram_one_frame(fake_gss, peers):
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind((LOCAL, 0))
    relay.settimeout(WAIT)
    done = threading.Event()
    p = peers(gss_server(bound=relay.getsockname(), then=lambda c, prot: done.wait(WAIT)))
    fake_gss.via(p)
    u = core.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(WAIT)
    try:
        u.sendto(b"one", (TARGET, 53))
        data, client = relay.recvfrom(65535)
        assert data[:4] == b"\x01\x03" + struct.pack("!H", len(data) - 4)      # exactly one frame
        assert fake_unwrap(data[4:]) == udp_header(TARGET, 53) + b"one"
        relay.sendto(b"not a frame", client)                                     # dropped
        relay.sendto(frame(3, b"forged"), client)                                # dropped
        relay.sendto(frame(3, fake_wrap(udp_header(TARGET, 53) + b"answer")), client)
        assert u.recvfrom(100) == (b"answer", (TARGET, 53))
    finally:
        u.close()
        relay.close()
        done.set()
