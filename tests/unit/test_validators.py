"""The value converters: each token gives a value or Bad naming the token,
never any other exception."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd import validators as V
from sockd.errors import Bad

FAST = settings(max_examples=300, deadline=None)


def bad(conv, tok):
    with pytest.raises(Bad) as e:
        conv(tok)
    assert e.value.token == tok
    return str(e.value)


def test_int_in_range():
    conv = V.to_int(0, 256)
    assert conv("0") == 0 and conv("256") == 256
    assert bad(conv, "257") == "out of range 0-256"
    assert bad(conv, "-1") == "out of range 0-256"
    assert bad(conv, "many") == "not a number"
    assert bad(conv, "0x10") == "not a number"


def test_seconds_with_units():
    assert [V.to_seconds(t) for t in ("30", "30s", "2m", "2H", "1d", "0.5")] == [30, 30, 120, 7200, 86400, 0.5]
    assert "not a duration" in bad(V.to_seconds, "soon")
    assert "not a duration" in bad(V.to_seconds, "")
    assert bad(V.to_seconds, "-1") == "duration out of range"
    assert bad(V.to_seconds, "3651d") == "duration out of range"
    assert bad(V.to_seconds, "inf") == "duration out of range"
    assert bad(V.to_seconds, "nan") == "duration out of range"
    assert bad(V.to_seconds, "-0.5m") == "duration out of range"


def test_stagger_is_0_or_from_10_ms_to_2_s():
    assert [V.to_stagger(t) for t in ("0", "0.25", "0.01", "2", "2s")] == [0, 0.25, 0.01, 2, 2]
    assert bad(V.to_stagger, "0.005") == "out of range: 0, or 0.01 to 2 seconds"
    assert bad(V.to_stagger, "3") == "out of range: 0, or 0.01 to 2 seconds"
    assert bad(V.to_stagger, "1m") == "out of range: 0, or 0.01 to 2 seconds"
    assert "not a duration" in bad(V.to_stagger, "soon")


def test_choice_bool_facility():
    conv = V.to_choice("fork", "threads")
    assert conv("FORK") == "fork"
    assert bad(conv, "bogus") == "expected one of: fork, threads"
    assert [V.to_bool(t) for t in ("yes", "ON", "true", "1", "no", "Off", "false", "0")] == [True] * 4 + [False] * 4
    assert bad(V.to_bool, "maybe") == "expected yes or no"
    assert V.to_facility("LOCAL3") == "local3" and V.FACILITIES["local3"] == 19
    assert bad(V.to_facility, "local8") == "unknown syslog facility"


def test_port_numbers_and_names():
    assert V.to_port("0") == 0 and V.to_port("65535") == 65535
    assert V.to_port("telnet") == 23
    assert bad(V.to_port, "65536") == "port number out of range"
    assert bad(V.to_port, "nosuchservice") == "unknown service name"
    assert bad(V.to_port, "tel\0net") == "unknown service name"


@pytest.mark.parametrize("tok,want", [
    ("127.0.0.1:1081", ("127.0.0.1", 1081)), ("[::1]:1082", ("::1", 1082)), ("[::1]", ("::1", 1080)),
    ("*:socks", ("0.0.0.0", 1080)), (":1083", ("0.0.0.0", 1083)), ("1084", ("0.0.0.0", 1084)),
    ("localhost", ("localhost", 1080)), ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
])
def test_listen_forms(tok, want):
    assert V.to_listen(tok) == want


@pytest.mark.parametrize("tok,msg", [
    ("[::1", "missing ']' in IPv6 address"), ("[nope]:1", "bad IPv6 address"),
    ("[::1]1080", "expected ':PORT' after ']'"), ("::1:1080", "write IPv6 addresses in brackets: [ADDRESS]:PORT"),
    ("bad_host!:1", "bad listen address"),
])
def test_listen_mistakes(tok, msg):
    assert bad(V.to_listen, tok) == msg


def test_listen_port_mistake_is_near_the_port():
    with pytest.raises(Bad) as e:
        V.to_listen("127.0.0.1:99999")
    assert e.value.token == "99999"


def test_rate_address_pidfile():
    assert V.parse_rate("20/10") == (20, 10.0)
    assert V.to_rate("1/0.5") == (1, 0.5)
    for tok in ("20", "0/10", "5/0", "5/86401", "x/1", "5/nan", "5/inf"):
        assert bad(V.to_rate, tok).startswith("expected N/SECONDS (")
    with pytest.raises(ValueError):
        V.parse_rate("20")
    assert V.to_failures("10/60") == (10, 60.0) and V.to_failures("OFF") is None
    for tok in ("10", "0/60", "10/0", "x/1"):
        assert bad(V.to_failures, tok).startswith("expected N/SECONDS or off (")
    assert V.to_address("[2001:db8::0001]") == "2001:db8::1" and V.to_address("10.0.0.1") == "10.0.0.1"
    assert bad(V.to_address, "10.0.0.256") == "not an IP address"
    assert V.to_pidfile("/run/sockd.pid") == "/run/sockd.pid"
    assert bad(V.to_pidfile, "sockd.pid") == "the pid file must be an absolute path"


def test_sizes_with_units():
    conv = V.to_size(0, 1 << 40)
    assert conv("65536") == 65536 and conv("0") == 0
    assert conv("512k") == conv("512K") == 512 << 10
    assert conv("64M") == conv("64m") == 64 << 20 and conv("1G") == 1 << 30
    for tok in ("", "M", "1.5M", "-1", "64MB", "1T", "\u00b2", "0x10"):
        assert bad(conv, tok) == "not a size (bytes, or a number with k, M or G)"
    assert bad(conv, "2048G") == "size out of range"
    assert bad(V.to_size(1, 10), "0") == "size out of range"


def test_port_ranges():
    assert V.to_port_range("40000-40999") == (40000, 40999)
    assert V.to_port_range("50000") == (50000, 50000) and V.to_port_range("1024-65535") == (1024, 65535)
    for tok in ("x", "1-", "-5", "40000-x", "4e4-5e4", "40000:40999", "\u00b2-\u00b3"):
        assert bad(V.to_port_range, tok) == "expected LOW-HIGH (port numbers)"
    for tok in ("21", "1000-2000", "50000-40000", "40000-70000"):
        assert bad(V.to_port_range, tok) == "expected ports from 1024 to 65535, the lower first"


# --- properties -------------------------------------------------------------------------------

CONVERTERS = [V.to_int(0, 256), V.to_seconds, V.to_choice("a", "b"), V.to_bool, V.to_facility, V.to_port,
              V.to_listen, V.to_rate, V.to_failures, V.to_address, V.to_pidfile, V.to_user, V.to_group, V.to_chroot,
              V.to_size(0, 1 << 40), V.to_port_range, V.to_stagger]
# what a token of a sockd.conf line can be: anything but blanks (NULs included)
token = st.text(st.characters(blacklist_categories=("Cs", "Zs"), blacklist_characters=" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85"),
                min_size=1, max_size=40)


@FAST
@given(token, st.sampled_from(range(len(CONVERTERS))))
def test_a_converter_returns_or_raises_bad(tok, which):
    try:
        CONVERTERS[which](tok)
    except Bad as exc:
        assert str(exc) and exc.token is not None and exc.token in tok


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
ports = st.integers(0, 65535)


@FAST
@given(st.one_of(ipv4.map(lambda a: (a, False)), ipv6.map(lambda a: (a, True))), ports)
def test_listen_round_trips(addr, port):
    host, v6 = addr
    text = "[%s]:%d" % (host, port) if v6 else "%s:%d" % (host, port)
    assert V.to_listen(text) == (host, port)


@FAST
@given(st.ip_addresses())
def test_address_round_trips(addr):
    assert V.to_address(str(addr)) == addr.compressed
    assert ipaddress.ip_address(V.to_address("[%s]" % addr)) == addr


@FAST
@given(st.integers(0, 10 ** 6), st.sampled_from(["", "s", "m", "h", "d"]))
def test_seconds_units_multiply(n, unit):
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if n * mult > 10 * 365 * 86400:
        assert bad(V.to_seconds, "%d%s" % (n, unit)) == "duration out of range"
    else:
        assert V.to_seconds("%d%s" % (n, unit)) == n * mult


def test_unicode_digits_are_not_numbers():
    # str.isdigit() is true for '²', which int() refuses: a traceback once
    for conv in (V.to_port, V.to_listen):
        with pytest.raises(Bad):
            conv("\u00b2")


# --- issue 16: metrics ADDRESS:PORT [CIDR...]

def test_metrics_address_and_default_loopback_list():
    m = V.to_metrics(["127.0.0.1:9120"])
    assert (m.host, m.port) == ("127.0.0.1", 9120)
    assert m.allowed_text == ("127.0.0.0/8", "::1/128")
    assert [s.match(4, int(ipaddress.ip_address("127.0.0.2"))) for s in m.allowed] == [True, False]
    v6 = V.to_metrics(["[::1]:0", "10.0.0.0/8,192.168.1.5", "2001:db8::/32"])
    assert (v6.host, v6.port) == ("::1", 0)
    assert v6.allowed_text == ("10.0.0.0/8", "192.168.1.5", "2001:db8::/32")
    one = v6.allowed[1]
    assert one.match(4, int(ipaddress.ip_address("192.168.1.5")))
    assert not one.match(4, int(ipaddress.ip_address("192.168.1.6")))
    assert V.to_metrics(["127.0.0.1:9120"]) == V.to_metrics(["127.0.0.1:9120", "127.0.0.0/8", "::1/128"])
    assert V.to_metrics(["127.0.0.1:9120"]) != V.to_metrics(["127.0.0.1:9120", "127.0.0.1"])


@pytest.mark.parametrize("args", [["9120"], ["localhost:9120"], ["systemd"], ["127.0.0.1:x"],
                                  ["127.0.0.1:9120", "example.com"], ["127.0.0.1:9120", "10.0.0.0/33"], []])
def test_metrics_refuses(args):
    with pytest.raises(Bad):
        V.to_metrics(args)
