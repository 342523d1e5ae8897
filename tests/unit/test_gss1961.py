"""gss1961: RFC 1961's frames, the level rule and per-message protection,
fed one byte at a time and coalesced, with hypothesis beside the examples.
The mechanism is a stand-in (pure code under test: a reversible toy wrap
with a checksum); the real one is tested with a real realm in
tests/integration/test_gssapi.py."""

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd import gss1961 as G
from sockd import protocol as P


def toy_wrap(data):
    """Not cryptography: a reversible transform with a CRC, so that a
    wrapped token differs from its plaintext and damage is detected."""
    return bytes(b ^ 0x5A for b in data) + zlib.crc32(data).to_bytes(4, "big")


def toy_unwrap(token):
    if len(token) < 4:
        raise P.ProtocolError("short token")
    data = bytes(b ^ 0x5A for b in token[:-4])
    if zlib.crc32(data).to_bytes(4, "big") != token[-4:]:
        raise P.ProtocolError("bad checksum")
    return data


def prot(chunk=G.DEFAULT_CHUNK):
    return G.Protection(toy_wrap, toy_unwrap, G.CONFIDENTIALITY, chunk)


# --- frames ---------------------------------------------------------------------------

def test_a_frame_is_version_type_length_token():
    assert G.frame(G.MTYP_AUTH, b"abc") == b"\x01\x01\x00\x03abc"
    assert G.frame(G.MTYP_DATA, b"") == b"\x01\x03\x00\x00"
    assert G.frame(G.MTYP_LEVEL, b"x" * 65535)[:4] == b"\x01\x02\xff\xff"


def test_a_token_over_65535_bytes_is_refused():
    with pytest.raises(ValueError):
        G.frame(G.MTYP_DATA, b"x" * 65536)


def test_parse_frame_waits_for_the_whole_frame():
    f = G.frame(G.MTYP_AUTH, b"token")
    for i in range(len(f)):
        assert G.parse_frame(f[:i]) is None
    fr, used = G.parse_frame(f + b"more")
    assert fr == G.Frame(G.MTYP_AUTH, b"token") and used == len(f)


def test_the_abort_has_no_length():
    assert G.parse_frame(b"\x01\xff") == (G.ABORTED, 2)
    assert G.parse_frame(b"\x01\xffrest")[1] == 2


@pytest.mark.parametrize("data, what", [(b"\x05\x01\x00\x01", "version 5"), (b"\x02", "version 2"),
                                        (b"\x01\x07\x00\x00", "unknown type 7")])
def test_a_wrong_version_or_type_is_a_protocol_error_at_once(data, what):
    with pytest.raises(P.ProtocolError) as e:
        G.parse_frame(data)
    assert what in str(e.value)


def test_parse_frame_at_an_offset():
    buf = b"junk" + G.frame(G.MTYP_DATA, b"ab")
    assert G.parse_frame(buf, 4) == (G.Frame(G.MTYP_DATA, b"ab"), len(buf))


# --- levels ---------------------------------------------------------------------------

@pytest.mark.parametrize("requested, allowed, granted", [
    (0, (0, 1, 2), 0), (1, (0, 1, 2), 1), (2, (0, 1, 2), 2),
    (0, (1, 2), 1),            # more protection than asked: the client may close
    (1, (2,), 2),
    (2, (0, 1), None),         # never less than asked
    (1, (0,), None),
    (3, (0, 1, 2), None),      # per-message: not offered
    (7, (0, 1, 2), None),
])
def test_choose_level(requested, allowed, granted):
    assert G.choose_level(requested, allowed) == granted


def test_level_names_are_dantes():
    assert [G.level_name(lv) for lv in (0, 1, 2)] == ["clear", "integrity", "confidentiality"]
    assert G.level_name(9) == "level 9"


# --- protection ------------------------------------------------------------------------

def test_seal_then_feed_gives_the_plaintext_back():
    p, q = prot(), prot()
    wire = p.seal(b"GET / HTTP/1.0\r\n\r\n")
    assert b"GET" not in wire and wire[:2] == b"\x01\x03"
    assert q.feed(wire) == b"GET / HTTP/1.0\r\n\r\n"
    assert p.wire_out == len(wire) and q.wire_in == len(wire)


def test_seal_chunks_what_one_token_cannot_carry():
    p = prot(chunk=1000)
    wire = p.seal(b"x" * 2500)
    frames = []
    pos = 0
    while pos < len(wire):
        fr, pos = G.parse_frame(wire, pos)
        frames.append(fr)
    assert [len(toy_unwrap(f.token)) for f in frames] == [1000, 1000, 500]
    assert prot(chunk=1000).feed(wire) == b"x" * 2500


def test_the_chunk_never_exceeds_the_token_limit():
    assert G.Protection(toy_wrap, toy_unwrap, 2, chunk=10 ** 6).chunk == G.MAX_TOKEN
    assert G.Protection(toy_wrap, toy_unwrap, 2, chunk=0).chunk == 1


def test_feed_one_byte_at_a_time_keeps_a_partial_frame_bounded():
    p, q = prot(), prot()
    msg = bytes(range(256)) * 40
    wire = p.seal(msg)
    out = b""
    for i in range(len(wire)):
        out += q.feed(wire[i:i + 1])
        assert len(q.pending) <= G.HEADER + G.MAX_TOKEN
    assert out == msg and q.pending == b""


def test_feed_takes_a_memoryview_and_does_not_keep_it():
    p, q = prot(), prot()
    wire = bytearray(p.seal(b"hello") + p.seal(b"world"))
    mv = memoryview(wire)
    assert q.feed(mv[:7]) == b""
    assert isinstance(q.pending, bytes)
    wire[:7] = b"\x00" * 7           # the receive buffer is reused: the kept part must be a copy
    assert q.feed(mv[7:]) == b"helloworld"


@pytest.mark.parametrize("bad, what", [
    (b"\x01\xff", "abort"),
    (G.frame(G.MTYP_AUTH, b"tok"), "type 1"),
    (G.frame(G.MTYP_DATA, b"not a toy token"), "checksum"),
    (b"\x05\x00", "version 5"),
])
def test_feed_refuses_what_is_not_protected_data(bad, what):
    with pytest.raises(P.ProtocolError) as e:
        prot().feed(bad)
    assert what in str(e.value)


def test_datagrams_are_one_frame_each():
    p, q = prot(), prot()
    d = p.seal_datagram(b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35payload")
    assert q.open_datagram(d).endswith(b"payload")
    with pytest.raises(P.ProtocolError):
        q.open_datagram(d + b"x")            # not exactly one frame
    with pytest.raises(P.ProtocolError):
        q.open_datagram(d[:-1])
    with pytest.raises(P.ProtocolError):
        q.open_datagram(b"\x01\xff")
    assert prot(chunk=10).seal_datagram(b"x" * 11) is None


# --- hypothesis ---------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 4096), st.data())
def test_any_messages_split_anywhere_come_out_whole(messages, chunk, data):
    p, q = prot(chunk), prot(chunk)
    wire = b"".join(p.seal(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    out, last = [], 0
    for c in cuts + [len(wire)]:
        out.append(q.feed(wire[last:c]))
        last = c
    assert b"".join(out) == b"".join(messages)
    assert q.pending == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_frame_none_or_a_protocol_error(data):
    try:
        got = G.parse_frame(data)
    except P.ProtocolError:
        return
    if got is not None:
        fr, used = got
        assert 2 <= used <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 50))
def test_any_bytes_fed_in_pieces_never_raise_anything_else(data, step):
    q = prot()
    try:
        for i in range(0, len(data), step):
            q.feed(data[i:i + step])
    except P.ProtocolError:
        pass
    assert len(q.pending) <= G.HEADER + G.MAX_TOKEN
