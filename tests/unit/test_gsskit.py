"""The pure parts of the GSS-API test bed (tests/gsskit.py): the decoder of
recorded RFC 1961 sessions, which the wire tests trust to say "no
plaintext", and the small value helpers."""

import struct

import pytest

import gsskit


def frame(mtyp, token):
    return bytes([1, mtyp]) + struct.pack("!H", len(token)) + token


def test_a_session_decodes_into_head_frames_and_tail():
    c2s = b"\x05\x02\x00\x01" + frame(1, b"AP-REQ") + frame(2, b"L") + frame(3, b"sealed-request")
    s2c = b"\x05\x01" + frame(1, b"AP-REP") + frame(2, b"L") + frame(3, b"x" * 300)
    s = gsskit.decode_session(c2s, s2c)
    assert s.c2s.head == b"\x05\x02\x00\x01" and s.s2c.head == b"\x05\x01"
    assert [(f.mtyp, f.token) for f in s.c2s.frames] == [(1, b"AP-REQ"), (2, b"L"), (3, b"sealed-request")]
    assert s.s2c.tokens(3) == [b"x" * 300] and s.c2s.tail == s.s2c.tail == b""


def test_level_0_data_is_an_unframed_tail_where_plaintext_is_found():
    request = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50GET /hello.txt HTTP/1.1\r\n"
    c2s = b"\x05\x01\x01" + frame(1, b"t") + frame(2, b"L") + request
    s = gsskit.decode_session(c2s, b"\x05\x01" + frame(1, b"r") + frame(2, b"L"))
    assert s.c2s.tail == request
    assert s.plaintext([b"GET /"]) == [("c2s", "tail")]


def test_plaintext_inside_a_frame_is_found_and_named():
    s = gsskit.decode_session(b"\x05\x01\x01" + frame(3, b"..GET /x.."), b"\x05\x01" + frame(3, b"\x00" * 40))
    assert s.plaintext([b"GET /"]) == [("c2s", "frame 0 (mtyp 3)")]
    assert s.plaintext([b"nothing"]) == []


def test_abort_and_a_truncated_frame():
    # the 2-byte abort closes a stream even as its last two bytes
    s = gsskit.decode_stream(b"\x05\x01" + b"\x01\xff", from_client=False)
    assert [f.mtyp for f in s.frames] == [0xff] and s.tail == b""
    # a frame whose length runs past the recording is left in the tail, whole
    cut = frame(3, b"abcdef")[:-2]
    s = gsskit.decode_stream(b"\x05\x01" + frame(1, b"t") + cut, from_client=False)
    assert len(s.frames) == 1 and s.tail == cut


def test_short_or_empty_recordings():
    assert gsskit.decode_stream(b"", from_client=True) == gsskit.Stream(b"", (), b"")
    assert gsskit.decode_stream(b"\x05", from_client=True) == gsskit.Stream(b"\x05", (), b"")
    assert gsskit.decode_stream(b"\x05\x03\x00", from_client=True).head == b"\x05\x03\x00"


def test_describe_prints_a_line_per_frame_and_marks_plaintext():
    s = gsskit.decode_session(b"\x05\x01\x01" + frame(1, b"\x60\x82") + frame(3, b"GET /"),
                              b"\x05\x01" + frame(0xff, b"")[:2])
    text = gsskit.describe(s)
    assert "--- client->server: 18 bytes" in text and "--- server->client: 4 bytes" in text
    assert "frame ver=1 mtyp=1 (auth/context token) len=2 head=60 82" in text
    assert "mtyp=3 (encapsulated data) len=5 head=47 45 54 20 2f  [plaintext visible]" in text
    assert "mtyp=255 (abort) len=0" in text


def test_empty_ccache_bytes_are_a_version_4_cache_with_only_the_principal():
    b = gsskit.empty_ccache_bytes("rcmd/localhost@SOCKS.TEST")
    assert b[:4] == b"\x05\x04\x00\x00"
    assert b[4:12] == struct.pack("!II", 1, 2)
    assert b[12:] == (struct.pack("!I", 10) + b"SOCKS.TEST" + struct.pack("!I", 4) + b"rcmd"
                      + struct.pack("!I", 9) + b"localhost")


def test_levels_and_ccache_names():
    assert [gsskit.level_name(n) for n in (0, 1, 2)] == ["clear", "integrity", "confidentiality"]
    assert gsskit.level_name("integrity") == "integrity"
    with pytest.raises(ValueError):
        gsskit.level_name("per-message")
    assert gsskit.ccache_name("/tmp/x") == "FILE:/tmp/x"
    assert gsskit.ccache_name("MEMORY:x") == "MEMORY:x"
