"""sockd/client/tools/rtelnet.py: a line-mode telnet that refuses every option.

The telnet codec (``Telnet.feed``, ``encode_line``) is pure: the classic
example stream in every chunking, and hypothesis -- streams built from
telnet tokens against the answer they call for, any bytes in any
chunking, and lines read back.  ``escape_prompt`` reads a StringIO.
session() and main() run for real against a telnet-like peer on
loopback, with standard input a pipe of the test's (the peer closes once
it has what it expects, so nothing waits for QUIET).
"""

import io
import os
import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd.client.tools import rtelnet
from sockd.client.tools.rtelnet import DO, DONT, IAC, SB, SE, WILL, WONT, Telnet, encode_line

from clientkit import LOCAL, WAIT, Peer, socksenv

assert socksenv     # the fixture, used by name
FAST = settings(max_examples=100, deadline=None)


def feed_in(chunks):
    t = Telnet()
    text, answer = b"", b""
    for c in chunks:
        a, b = t.feed(c)
        text += a
        answer += b
    return text, answer


def test_telnet_refuses_every_option_in_any_chunking():
    stream = (b"\xff\xfd\x18" b"\xff\xfb\x01" b"\xff\xfa\x18\x01" + b"x" * 5000 + b"\xff\xf0"
              b"log\xff\xffin: " b"\xff\xfc\x03" b"\xff\xfe\x05" b"\xff\xf1" b"\xff\xfd\x1f")
    want_text = b"log\xffin: "
    want_answer = b"\xff\xfc\x18" b"\xff\xfe\x01" b"\xff\xfc\x1f"
    for size in (1, 2, 3, 7, len(stream)):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert feed_in(chunks) == (want_text, want_answer), size
    assert encode_line(b"a\xffb\n") == b"a\xff\xffb\r\n"


@pytest.mark.parametrize("line,wire", [
    (b"", b"\r\n"), (b"ls -l", b"ls -l\r\n"), (b"dos\r\n", b"dos\r\n"), (b"two\n\n", b"two\r\n"),
    (b"\xff\xff", b"\xff\xff\xff\xff\r\n"), (b"in\rside", b"in\rside\r\n"),
])
def test_encode_line(line, wire):
    assert encode_line(line) == wire


# A telnet stream as tokens, each with the text and the answer it calls for.
DATA = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\xff", b"")).filter(bool).map(
    lambda b: (b, b, b""))
ESCAPED = st.just((b"\xff\xff", b"\xff", b""))
OPTION = st.tuples(st.sampled_from([DO, DONT, WILL, WONT]), st.integers(0, 255)).map(
    lambda vo: (bytes((IAC, vo[0], vo[1])), b"",
                {DO: bytes((IAC, WONT, vo[1])), WILL: bytes((IAC, DONT, vo[1]))}.get(vo[0], b"")))
SUBNEG = st.binary(max_size=30).map(lambda b: (bytes((IAC, SB)) + b.replace(b"\xff", b"\xff\xff")
                                               + bytes((IAC, SE)), b"", b""))
COMMAND = st.sampled_from([241, 242, 243, 244, 245, 246, 247, 248, 249, 239]).map(
    lambda c: (bytes((IAC, c)), b"", b""))          # NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, EOR
TOKENS = st.lists(st.one_of(DATA, ESCAPED, OPTION, SUBNEG, COMMAND), max_size=25)


@FAST
@given(TOKENS, st.data())
def test_every_do_gets_wont_every_will_gets_dont_in_any_chunking(tokens, data):
    stream = b"".join(t[0] for t in tokens)
    want = (b"".join(t[1] for t in tokens), b"".join(t[2] for t in tokens))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert feed_in(chunks) == want


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20))
def test_any_bytes_in_any_chunking(stream, sizes):
    whole = feed_in([stream])
    chunks, i = [], 0
    for n in sizes or [1]:
        chunks.append(stream[i:i + n])
        i += n
    chunks.append(stream[i:])
    assert feed_in(chunks) == whole
    text, answer = whole
    assert len(answer) % 3 == 0 and len(text) <= len(stream)
    for k in range(0, len(answer), 3):
        assert answer[k] == IAC and answer[k + 1] in (WONT, DONT)     # refusals only, never an agreement


@FAST
@given(st.binary(max_size=200))
def test_a_line_reads_back_as_itself(line):
    assert feed_in([encode_line(line)]) == (line.rstrip(b"\r\n") + b"\r\n", b"")


@pytest.mark.parametrize("typed,ends,shown", [
    ("q\n", True, "telnet> "),
    ("quit\n", True, "telnet> "),
    ("close\n", True, "telnet> "),
    ("\n", False, "telnet> "),
    ("continue\n", False, "telnet> "),
    ("", True, "telnet> "),
    ("help\nc\n", True, "telnet> commands: close, quit (end the session); continue (or an empty line)\ntelnet> "),
])
def test_escape_prompt(monkeypatch, typed, ends, shown):
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    out = io.StringIO()
    assert rtelnet.escape_prompt(out) is ends
    assert out.getvalue() == shown


# --- session and main against a telnet-like peer -----------------------------------------------

@pytest.fixture
def stdin(monkeypatch):
    """type(data) -> standard input becomes a pipe holding ``data``, then EOF."""
    files = []

    def typed(data):
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        f = os.fdopen(r, "r")
        files.append(f)
        monkeypatch.setattr(sys, "stdin", f)
    yield typed
    for f in files:
        f.close()


def telnet_peer(expect, log):
    """Offers options and text, then reads until every piece of ``expect``
    has come (in any order), answers and closes its side."""
    def handle(c, peer):
        c.send(b"\xff\xfd\x18\xff\xfb\x01Welcome\r\n\x1b[31mlogin: ")
        got = b""
        while not all(e in got for e in expect):
            got += c.sock.recv(4096) or b"<EOF>"
            assert b"<EOF>" not in got and len(got) < 100000, got[:200]
        log.append(got)
        c.send(b"bye\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        c.read_all()                # what else comes (late refusals) until the client closes: no RST
    return handle


def test_a_session_answers_options_and_sends_lines(socksenv, stdin):
    refusals = [b"\xff\xfc\x18", b"\xff\xfe\x01"]
    lines = [b"jane\r\n", b"pass \xff\xff word\r\n", b"last line\r\n"]
    log = []
    stdin(b"jane\npass \xff word\r\nlast line")                # the last line has no newline
    with Peer(telnet_peer(refusals + lines, log)) as p:
        out = io.StringIO()
        sock = rtelnet.common.connect(LOCAL, p.port, timeout=WAIT)
        with sock:
            rtelnet.session(sock, out, interactive=False)
    rest = log[0]
    for piece in refusals + lines:
        assert rest.count(piece) == 1
        rest = rest.replace(piece, b"")
    assert rest == b""
    assert out.getvalue() == "Welcome\n?[31mlogin: bye\nConnection closed by foreign host.\n"


def test_a_very_long_line_is_sent_in_pieces(socksenv, stdin):
    log = []
    stdin(b"a" * 9000)
    with Peer(telnet_peer([b"a" * 9000 + b"\r\n"], log)) as p:
        sock = rtelnet.common.connect(LOCAL, p.port, timeout=WAIT)
        with sock:
            rtelnet.session(sock, io.StringIO(), interactive=False)
    assert log[0].replace(b"\xff\xfc\x18", b"").replace(b"\xff\xfe\x01", b"") == b"a" * 9000 + b"\r\n"


def test_main(socksenv, stdin, capsys):
    log = []
    stdin(b"hello\n")
    with Peer(telnet_peer([b"hello\r\n"], log)) as p:
        assert rtelnet.main([LOCAL, str(p.port)]) == 0
    out = capsys.readouterr().out
    assert out == ("Trying %s...\nConnected to %s.\nEscape character is '^]'.\n"
                   "Welcome\n?[31mlogin: bye\nConnection closed by foreign host.\n" % (LOCAL, LOCAL))


@pytest.mark.parametrize("args,err", [
    (["h.example", "nosuchservice"], "rtelnet: bad port: nosuchservice"),
    (["127.0.0.2", "0"], "rtelnet: bad port: 0"),
])
def test_main_failures(socksenv, capsys, args, err):
    assert rtelnet.main(args) == 1
    assert capsys.readouterr().err.splitlines()[-1] == err


def test_main_refused(socksenv, capsys):
    socksenv.conf("deny ALL\n")
    assert rtelnet.main(["127.0.0.2", "23"]) == 1
    out, err = capsys.readouterr()
    assert out == "Trying 127.0.0.2...\n"
    assert err.startswith("rtelnet: connect to 127.0.0.2 port 23 refused: %s:1: denied by 'deny ALL'"
                          % socksenv.path)


def test_main_usage(capsys):
    with pytest.raises(SystemExit) as ei:
        rtelnet.main([])
    assert ei.value.code == 2 and "usage: rtelnet" in capsys.readouterr().err
