"""sockd.netinfo: this host's addresses, and which destinations are private
to it.

The /proc parsers are pure: sample files, and hypothesis for IPv6 lines
built from any address.  is_loopback/is_private: a table and properties
over any address.  local_addresses() reads this machine's /proc once, to
show that loopback is among them.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import netinfo as N
from sockd.rules import ip_key

TRIE = ("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n"
        "     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n"
        "     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n"
        "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.2\n        /32 host LOCAL\n")
INET6 = ("00000000000000000000000000000001 01 80 10 80       lo\n"
         "fd000000000000000000000000000002 02 40 00 80 eth0\n"
         "short 02 40 00 80 eth0\n"
         "zz000000000000000000000000000002 02 40 00 80 eth0\n\n")


def test_host_addresses_from_proc():          # moved here from test_proxyproto.py
    assert N.parse_fib_trie(TRIE) == {"127.0.0.1", "192.0.2.2"}
    assert N.parse_if_inet6(INET6) == {"::1", "fd00::2"}


@given(st.lists(st.ip_addresses(v=6), max_size=5))
def test_if_inet6_lines_of_any_address(addrs):
    text = "".join("%032x 02 40 00 80 eth0\n" % int(a) for a in addrs)
    assert N.parse_if_inet6(text) == {a.compressed for a in addrs}


@given(st.lists(st.ip_addresses(v=4), max_size=5), st.lists(st.ip_addresses(v=4), max_size=3))
def test_fib_trie_keeps_only_host_local_leaves(local, other):
    text = "Main:\n" + "".join("     |-- %s\n        /32 host LOCAL\n" % a for a in local) + \
        "".join("     |-- %s\n        /32 link BROADCAST\n" % a for a in other)
    assert N.parse_fib_trie(text) == {str(a) for a in local}


OWN = frozenset({ip_key("192.0.2.2"), ip_key("2001:db8::2")})


@pytest.mark.parametrize("addr,private", [
    ("127.0.0.1", True), ("127.255.255.254", True), ("169.254.169.254", True), ("169.254.0.1", True),
    ("0.0.0.0", True), ("::1", True), ("fe80::1", True), ("febf::1", True), ("::", True),
    ("::ffff:127.0.0.1", True), ("192.0.2.2", True), ("2001:db8::2", True),
    ("192.0.2.3", False), ("8.8.8.8", False), ("2001:db8::1", False), ("fec0::1", False), ("128.0.0.1", False),
    ("169.253.255.255", False), ("10.0.0.1", False),
])
def test_is_private(addr, private):
    assert N.is_private(ip_key(addr), OWN) is private


@given(st.ip_addresses())
def test_is_private_is_what_ipaddress_calls_loopback_link_local_or_unspecified(ip):
    key = ip_key(str(ip))
    expect = ip.is_loopback or ip.is_link_local or ip.is_unspecified
    if ip.version == 6 and ip.ipv4_mapped is not None:
        mapped = ip.ipv4_mapped
        expect = mapped.is_loopback or mapped.is_link_local or mapped.is_unspecified
    assert N.is_private(key) == expect
    assert N.is_private(key, frozenset({key}))                # one of ours is always private
    assert N.is_loopback(key) == (ip.is_loopback if ip.version == 4 or ip.ipv4_mapped is None
                                  else ip.ipv4_mapped.is_loopback)


def test_this_hosts_addresses_include_loopback():
    own = N.local_addresses()
    assert isinstance(own, frozenset) and ip_key("127.0.0.1") in own
    assert all(fam in (4, 6) for fam, _ in own)


@pytest.mark.parametrize("text,unspecified", [
    ("0.0.0.0", True), ("0.1.2.3", True), ("0.255.255.255", True), ("::", True), ("::ffff:0.0.0.0", True),
    ("1.0.0.0", False), ("127.0.0.1", False), ("::1", False), ("2001:db8::", False),
])
def test_unspecified_destinations(text, unspecified):
    assert N.is_unspecified(ip_key(text)) is unspecified
