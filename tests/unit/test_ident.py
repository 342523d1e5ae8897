"""sockd.ident: RFC 1413, the codec and the lookup.

The codec (query, parse_reply) is pure: example replies, and hypothesis
for any bytes.  IdentQuery is driven on a real sockd.loop.Loop against a
small identd of the test's own on loopback (port 0: the module's
IDENT_PORT is pointed at it), which answers whole, in pieces, wrongly, not
at all, or closes.  Checked: the request sent, the answer read, every
failure reported as unreachable, done() called exactly once (never after
cancel()), and nothing left registered.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import ident as I
from loopkit import Identd, closed_port, run_for, run_until, watched

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the codec (moved here from test_identity_units.py and test_properties.py) ----------------------


def test_ident_query_format():
    assert I.query(6191, 23) == b"6191 , 23\r\n"


@pytest.mark.parametrize("reply,expected", [
    (b"6191, 23 : USERID : UNIX : stjohns\r\n", ("USERID", "stjohns")),
    (b"6191,23:USERID:UNIX,US-ASCII:stjohns\n", ("USERID", "stjohns")),
    (b"6191 , 23 : USERID : OTHER : a:b:c\r\n", ("USERID", "a:b:c")),
    (b"6195, 23 : ERROR : NO-USER\r\n", ("ERROR", "NO-USER")),
    (b"6191, 24 : USERID : UNIX : stjohns\r\n", ("ERROR", "wrong ports")),
    (b"garbage\r\n", ("ERROR", "garbage")),
    (b"6191, 23 : USERID : UNIX : \r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : " + b"x" * 65 + b"\r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : a\x1bb\r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : \xff\xfe\r\n", ("ERROR", "garbage")),
    (b"6191, 23 : WHATEVER : x\r\n", ("ERROR", "garbage")),
    (b"6191, 23 : ERROR :\r\n", ("ERROR", "UNKNOWN-ERROR")),
    (b"6191, 23 : ERROR : " + b"X" * 40 + b"\r\n", ("ERROR", "X" * 32)),
    (b"6191, 23 : userid : UNIX : joe\r\n", ("USERID", "joe")),
    (b"6191, 23 : USERID : UNIX : joe\r\nand more lines\r\n", ("USERID", "joe")),
    (b"6191, 23, 5 : USERID : UNIX : joe\r\n", ("ERROR", "garbage")),
])
def test_ident_replies(reply, expected):
    p1 = 6195 if b"6195" in reply else 6191
    assert I.parse_reply(reply, p1, 23) == expected


@FAST
@given(st.binary(max_size=1200), st.integers(0, 65535), st.integers(0, 65535))
def test_ident_reply(data, p1, p2):
    kind, value = I.parse_reply(data, p1, p2)
    assert kind in (I.USERID, I.ERROR)
    if kind == I.USERID:
        assert 0 < len(value) <= I.MAX_USERID and value.isprintable()


userids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=I.MAX_USERID)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65535), st.integers(1, 65535), userids, st.sampled_from(["UNIX", "OTHER", "UNIX,US-ASCII"]),
       st.sampled_from(["\r\n", "\n", ""]), st.sampled_from(["", " ", "  "]))
def test_a_well_formed_answer_gives_its_user(p1, p2, user, opsys, end, pad):
    line = "%d%s,%s%d%s:%sUSERID%s:%s%s%s:%s%s%s" % (p1, pad, pad, p2, pad, pad, pad, pad, opsys, pad, pad, user, end)
    assert I.parse_reply(line.encode(), p1, p2) == (I.USERID, user)
    assert I.parse_reply(line.encode(), p1, p2 ^ 1)[0] == I.ERROR


# --- the lookup -----------------------------------------------------------------------------------

class Done:
    def __init__(self):
        self.calls = []

    def __call__(self, kind, value):
        self.calls.append((kind, value))


@pytest.fixture
def lookup(loop, net, monkeypatch):
    """lookup(script, timeout=2, local_ip=None) -> (the answer, the identd, the query)"""
    def run(script, timeout=2.0, local_ip="127.0.0.1", client_port=6191, server_port=1080):
        identd = Identd(loop, net, script) if script is not None else None
        monkeypatch.setattr(I, "IDENT_PORT", identd.port if identd else closed_port())
        done = Done()
        q = I.IdentQuery(loop, local_ip, "127.0.0.1", client_port, server_port, timeout, done)
        assert run_until(loop, lambda: done.calls, timeout=timeout + 1)
        run_for(loop, 0.01)
        assert len(done.calls) == 1, done.calls                   # exactly once
        assert q.sock is None and q.timer is None and not (watched(loop) & {q.fd})
        return done.calls[0], identd, q
    return run


def test_the_answer_names_the_user(lookup):
    answer, identd, _ = lookup(lambda q: [b"6191 , 1080 : USERID : UNIX : alice\r\n"])
    assert answer == (I.USERID, "alice")
    assert identd.queries == [b"6191 , 1080\r\n"]


def test_an_answer_in_pieces(lookup):
    answer, _, _ = lookup(lambda q: [b"6191, 10", b"80 : USERID : UN", b"IX : alice\r", b"\n"])
    assert answer == (I.USERID, "alice")


def test_an_answer_ended_by_the_close_instead_of_a_newline(lookup):
    assert lookup(lambda q: [b"6191,1080:USERID:UNIX:alice"])[0] == (I.USERID, "alice")


def test_an_error_answer(lookup):
    assert lookup(lambda q: [b"6191 , 1080 : ERROR : NO-USER\r\n"])[0] == (I.ERROR, "NO-USER")


def test_an_answer_about_other_ports(lookup):
    assert lookup(lambda q: [b"6192 , 1080 : USERID : UNIX : alice\r\n"])[0] == (I.ERROR, "wrong ports")


def test_an_endless_answer_is_read_no_further_than_the_limit(lookup):
    answer, _, q = lookup(lambda q: [b"x" * 700, b"y" * 700, b"z" * 700])
    assert answer == (I.ERROR, "garbage") and len(q.buf) == I.MAX_REPLY


def test_a_close_without_an_answer_is_unreachable(lookup):
    assert lookup(lambda q: [])[0] == (I.UNREACHABLE, "closed without an answer")


def test_no_identd_is_unreachable(lookup):
    assert lookup(None)[0] == (I.UNREACHABLE, "ECONNREFUSED")


def test_a_silent_identd_times_out(lookup):
    answer, identd, _ = lookup(lambda q: "silent", timeout=0.1)
    assert answer == (I.UNREACHABLE, "timed out") and identd.queries


def test_the_query_comes_from_the_address_the_client_reached(lookup):
    _, identd, _ = lookup(lambda q: [b"6191 , 1080 : USERID : UNIX : a\r\n"], local_ip="127.0.0.2")
    assert identd.peers[0][0] == "127.0.0.2"


def test_cancel_means_no_answer_and_nothing_left(loop, net, monkeypatch):
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    done = Done()
    q = I.IdentQuery(loop, None, "127.0.0.1", 6191, 1080, 0.05, done)
    assert run_until(loop, lambda: identd.queries)
    q.cancel()
    run_for(loop, 0.1)                                  # past the timeout
    assert done.calls == [] and q.sock is None and q.timer is None and q.fd not in watched(loop)
    q.cancel()
    q.close()                                       # forgotten is forgotten: not even the error handler answers
    assert done.calls == []


def test_close_is_the_error_handlers_and_answers_unreachable_once(loop, net, monkeypatch):
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    done = Done()
    q = I.IdentQuery(loop, None, "127.0.0.1", 6191, 1080, 0.05, done)
    q.close()
    q.close()
    run_for(loop, 0.1)
    assert done.calls == [(I.UNREACHABLE, "internal error")]
    assert q.fd not in watched(loop)
