"""sockd.proxyproto: PROXY protocol v1 and v2, vectors fed whole and one
byte at a time; hypothesis for any addresses and for any bytes."""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import protocol as P
from sockd import proxyproto as PP

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CASES = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1080\r\n", PP.Proxied("192.0.2.1", 56324, "198.51.100.2", 1080)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1080\r\n", PP.Proxied("2001:db8::1", 4000, "2001:db8::2", 1080)),
    (b"PROXY UNKNOWN\r\n", PP.Local()),
    (PP.header_v2("192.0.2.1", 56324, "198.51.100.2", 1080), PP.Proxied("192.0.2.1", 56324, "198.51.100.2", 1080)),
    (PP.header_v2("2001:db8::1", 1, "2001:db8::2", 2), PP.Proxied("2001:db8::1", 1, "2001:db8::2", 2)),
    (PP.header_v2("", 0, "", 0, local=True), PP.Local()),
    # with TLVs after the addresses (skipped)
    (PP.V2_SIGNATURE + b"\x21\x11\x00\x11" + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 0]) + b"\x04\x00\x02ab",
     PP.Proxied("10.0.0.1", 80, "10.0.0.2", 256)),
]


@pytest.mark.parametrize("data,expected", CASES)
def test_vectors(data, expected):
    after = b"\x05\x01\x00"
    assert PP.parse(data + after) == (expected, len(data))
    for i in range(len(data)):
        assert PP.parse(data[:i]) is None


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.0\r\n", b"\x05\x01\x00", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", b"PROXY " + b"x" * 120,
    PP.V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),          # version 3
    PP.V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),           # short addresses
    PP.V2_SIGNATURE + b"\x21\x11\xff\xff",                      # too long
    PP.V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),          # unknown command
])
def test_malformed(bad):
    with pytest.raises(P.ProtocolError):
        PP.parse(bad)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([4, 6]).flatmap(lambda v: st.tuples(st.ip_addresses(v=v), st.ip_addresses(v=v))),
       st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=20))
def test_any_header_parses_back_in_both_versions(addrs, sport, dport, after):
    src, dst = (str(a) if a.version == 4 else socket.inet_ntop(socket.AF_INET6, a.packed) for a in addrs)
    want = PP.Proxied(src, sport, dst, dport)
    v2 = PP.header_v2(src, sport, dst, dport)
    assert PP.parse(v2 + after) == (want, len(v2))
    v1 = ("PROXY TCP%d %s %s %d %d\r\n" % (addrs[0].version, src, dst, sport, dport)).encode()
    assert PP.parse(v1 + after) == (want, len(v1))
    for i in range(0, len(v1), 7):
        assert PP.parse(v1[:i]) is None


@FAST
@given(st.builds(lambda p, b: p + b, st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", PP.V2_SIGNATURE,
                                                      PP.V2_SIGNATURE + b"\x21\x11"]),
                 st.binary(max_size=300)))
def test_proxy_protocol(data):
    for end in (len(data), len(data) // 2):
        try:
            got = PP.parse(data[:end])
        except P.ProtocolError:
            continue
        if got is not None:
            header, used = got
            assert isinstance(header, (PP.Proxied, PP.Local)) and 0 < used <= end
