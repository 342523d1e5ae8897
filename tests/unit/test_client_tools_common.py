"""sockd/client/tools/common.py: what rfinger, rwhois, rtelnet and rftp share.

``printable`` and ``port_of`` are pure: example tables, and hypothesis
for network bytes and port arguments, which can be hostile.  start(),
connect(), query() and run_query() run for real against the test's own
peers on loopback (a finger-like server that answers in pieces, one that
sends too much), with socks.conf written by the ``socksenv`` fixture.
"""

import io
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd.client import core
from sockd.client.tools import common

from clientkit import LOCAL, NONAME, TARGET, Peer, listener, socksenv

assert socksenv     # the fixture, used by name


@pytest.mark.parametrize("data,text", [
    (b"plain text\n", "plain text\n"),
    (b"dos\r\nlines\r\n", "dos\nlines\n"),
    (b"tab\there", "tab\there"),
    (b"\x1b[2J\x07bell", "?[2J?bell"),                    # no escape sequence reaches the terminal
    (b"lone\rcr", "lone?cr"),
    (b"\x00\x7f\x80\x9b", "????"),                        # NUL, DEL, C1 controls (0x9b is CSI)
    (b"caf\xe9 \xa0\xff", "caf\xe9 \xa0\xff"),            # Latin-1 text stays
])
def test_printable(data, text):
    assert common.printable(data) == text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_printable_never_lets_a_control_character_through(data):
    text = common.printable(data)
    assert all(c in "\t\n" or " " <= c < "\x7f" or c >= "\xa0" for c in text)
    assert len(text) == len(data) - data.count(b"\r\n")


@pytest.mark.parametrize("text,port", [("79", 79), ("65535", 65535), ("1", 1), ("finger", 79), ("whois", 43),
                                       ("telnet", 23), ("00021", 21)])
def test_port_of(text, port):
    assert common.port_of(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "-1", "", "1e3", " 80", "nosuchservice", "0x50", "99999999999"])
def test_bad_ports(text):
    with pytest.raises(common.Fail) as ei:
        common.port_of(text)
    assert str(ei.value) == "bad port: %s" % text


@pytest.mark.parametrize("text", ["\u00b2", "\u0663"])
def test_a_unicode_digit_is_not_a_port(text):
    with pytest.raises(common.Fail):
        common.port_of(text)


def test_a_nul_in_a_port_name_is_a_bad_port():
    with pytest.raises(common.Fail):
        common.port_of("ftp\x00")


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=12))
def test_any_ascii_port_text_is_a_port_or_fail(text):
    # (ASCII without NUL; Unicode digits and NUL have their own tests above)
    try:
        port = common.port_of(text)
    except common.Fail as exc:
        assert str(exc) == "bad port: %s" % text
    else:
        assert 0 < port < 65536


# --- start and connect ---------------------------------------------------------------------------

def test_start_stops_the_program_on_a_configuration_mistake(socksenv, capsys):
    path = socksenv.conf("sockd @=fw ALL\nfrobnicate ALL\n")
    with pytest.raises(SystemExit) as ei:
        common.start("rfoo")
    assert ei.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "rfoo: %s:2: unknown action: expected deny, direct, sockd or sockd@SERVER (near 'frobnicate')" % path)
    socksenv.conf("direct ALL\n")
    common.start("rfoo")


def test_connect_gives_a_connected_socket_or_the_reason(socksenv):
    socksenv.conf("deny 10.0.0.0/8\ndirect ALL\n")
    dst = listener(TARGET)
    with dst:
        s = common.connect(TARGET, dst.getsockname()[1], timeout=1.5)
        with s:
            assert isinstance(s, core.socksocket) and s.gettimeout() == 1.5
            assert s.getpeername() == dst.getsockname()
        port = dst.getsockname()[1]
    with pytest.raises(common.Fail) as ei:
        common.connect(TARGET, port)                        # nothing listens now
    assert str(ei.value) == "connect to %s port %d: Connection refused" % (TARGET, port)
    with pytest.raises(common.Fail) as ei:
        common.connect("10.1.1.1", 79)
    assert str(ei.value).startswith("connect to 10.1.1.1 port 79 refused: %s:1: denied by" % socksenv.path)
    with pytest.raises(common.Fail) as ei:
        common.connect(NONAME, 79)
    assert str(ei.value) == "%s: Name or service not known" % NONAME
    six = listener("::1")
    with six:
        with common.connect("::1", six.getsockname()[1]) as s:
            assert s.family == socket.AF_INET6


# --- query and run_query against a finger-like peer -------------------------------------------

def answering(*pieces, log=None):
    """Reads one line, then sends ``pieces`` a little apart and closes."""
    def handle(c, peer):
        line = c.read_until(b"\r\n")
        if log is not None:
            log.append(line)
        for p in pieces:
            c.send(p)
            time.sleep(0.01)
    return handle


def test_query_sends_one_line_and_shows_the_answer_as_text(socksenv):
    log = []
    with Peer(answering(b"one\r", b"\ntwo\r\n\x1b]0;title\x07", b"end\r", log=log)) as p:
        out = io.StringIO()
        common.query(LOCAL, p.port, "jane caf\u00e9", out)
    assert log == ["jane caf\u00e9\r\n".encode()]
    # a CR at the end of one read waits for its LF in the next; a last lone CR is shown
    assert out.getvalue() == "one\ntwo\n?]0;title?end?"


def test_query_of_a_server_that_says_nothing(socksenv):
    with Peer(answering()) as p:
        out = io.StringIO()
        common.query(LOCAL, p.port, "", out)
    assert out.getvalue() == ""


def test_an_answer_too_long_is_stopped(socksenv):
    def flood(c, peer):
        c.read_until(b"\r\n")
        try:
            c.send(b"x" * (common.MAX_ANSWER + 1))
        except OSError:
            pass                            # the client stopped reading, as it should
    with Peer(flood) as p:
        out = io.StringIO()
        with pytest.raises(common.Fail, match=r"^127\.0\.0\.1: answer longer than 4194304 bytes; stopped$"):
            common.query(LOCAL, p.port, "all", out)
    assert len(out.getvalue()) <= common.MAX_ANSWER


def test_run_query_status_heading_and_errors(socksenv, capsys):
    with Peer(answering(b"hello\r\n")) as p:
        assert common.run_query("rfoo", LOCAL, str(p.port), "q", "[here]\n") == 0
    assert capsys.readouterr().out == "[here]\nhello\n"
    assert common.run_query("rfoo", LOCAL, "nosuchservice", "q", "[h]\n") == 1
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == "rfoo: bad port: nosuchservice" and out == ""
    port = listener(LOCAL)
    number = port.getsockname()[1]
    port.close()
    assert common.run_query("rfoo", LOCAL, str(number), "q", "[h]\n") == 1
    out, err = capsys.readouterr()
    assert out == "[h]\n" and err.splitlines()[-1] == "rfoo: connect to %s port %d: Connection refused" % (
        LOCAL, number)
