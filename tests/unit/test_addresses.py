"""sockd.addresses: address texts, service names, errno words, and the
blocking resolver calls.

``addr_text`` is pure: a table and hypothesis over IPv4/IPv6 addresses.
Service names read a services file of the test's own (the module's cache
replaced for the test).  The resolver calls are given a fake
getaddrinfo/gethostbyaddr where the answer must be exact (order, limits,
the forward check of reverse names), and the real resolver only for
literals and localhost.
"""

import errno
import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import addresses as AD


@pytest.mark.parametrize("raw,shown", [
    ("192.0.2.1", "192.0.2.1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:c000:201", "::ffff:c000:201"),           # the mapped form without dots is left alone
    ("::1", "::1"),
])
def test_addr_text(raw, shown):
    assert AD.addr_text(raw) == shown


@given(st.ip_addresses(v=4))
def test_addr_text_of_ipv4_and_its_mapped_form(ip):
    assert AD.addr_text(str(ip)) == str(ip)
    assert AD.addr_text("::ffff:%s" % ip) == str(ip)


@given(st.ip_addresses(v=6), st.sampled_from(["", "%eth0", "%1"]))
def test_addr_text_of_ipv6_drops_only_the_scope(ip, scope):
    text = ip.compressed
    shown = AD.addr_text(text + scope)
    if ip.ipv4_mapped is not None and "." in text:
        assert shown == str(ip.ipv4_mapped)
    else:
        assert shown == text
    assert ipaddress.ip_address(shown)


@pytest.fixture
def services(monkeypatch, tmp_path):
    monkeypatch.setattr(AD, "_SERVICES", {})
    monkeypatch.setattr(AD, "_LOADED", [])
    path = tmp_path / "services"
    path.write_text("# name port/proto aliases\ntelnet 23/tcp\nmyproto 4000/tcp alias  # a comment\n"
                    "udponly 4001/udp\nbroken notaport/tcp\nsecond 4000/tcp\n\n")
    return path


def test_service_names_from_the_services_file(services):
    AD.load_services(str(services))
    assert AD.service_name(4000) == "myproto"           # the first name wins
    assert AD.service_name(23) == "telnet"
    assert AD.service_name(4001) != "udponly"          # udp lines are not tcp services
    assert "notaport" not in AD._SERVICES.values() and "broken" not in AD._SERVICES.values()


def test_a_port_without_a_name_is_its_number(services, monkeypatch):
    def none(port, proto):
        raise OSError("port/proto not found")
    monkeypatch.setattr(socket, "getservbyport", none)
    assert AD.service_name(40123) == "40123"
    assert AD.service_name(70000) == "70000"


def test_once_the_file_is_read_a_miss_does_not_ask_the_c_library(services, monkeypatch):
    AD.load_services(str(services))

    def asked(port, proto):
        raise AssertionError("getservbyport(%d) asked" % port)
    monkeypatch.setattr(socket, "getservbyport", asked)
    assert AD.service_name(40123) == "40123"
    assert AD.service_name(23) == "telnet"


def test_the_name_cache_is_bounded(services, monkeypatch):
    monkeypatch.setattr(AD, "_SERVICES_MAX", 10)
    for port in range(30000, 30050):
        AD.service_name(port)
    assert len(AD._SERVICES) == 10
    AD.load_services(str(services) + ".missing")       # a missing file is no error


def test_errno_text():
    assert AD.errno_text(errno.ECONNREFUSED) == "Connection refused"
    assert AD.errno_text(2 ** 70) == "error %d" % 2 ** 70


def test_resolve_literals_and_localhost():
    assert AD.resolve("127.0.0.1", 80) == [(socket.AF_INET, "127.0.0.1")]
    assert AD.resolve("::1", 80) == [(socket.AF_INET6, "::1")]
    got = AD.resolve("localhost", 80)
    assert got and len(got) == len(set(got)) and all(AD.addr_text(ip) in ("127.0.0.1", "::1") for _, ip in got)


def test_resolve_keeps_the_resolvers_order_without_repeats_and_at_most_eight(monkeypatch):
    answer = []
    for i in range(12):
        for fam, ip in ((socket.AF_INET6, "2001:db8::%d" % i), (socket.AF_INET, "192.0.2.%d" % i)):
            answer.append((fam, socket.SOCK_STREAM, 6, "", (ip, 80)))
            answer.append((fam, socket.SOCK_STREAM, 6, "", (ip, 80)))     # twice
    answer.insert(0, (socket.AF_UNIX, socket.SOCK_STREAM, 0, "", "/x"))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: answer)
    got = AD.resolve("many.example", 80)
    assert len(got) == AD.MAX_ADDRESSES == 8
    assert got[:4] == [(socket.AF_INET6, "2001:db8::0"), (socket.AF_INET, "192.0.2.0"),
                       (socket.AF_INET6, "2001:db8::1"), (socket.AF_INET, "192.0.2.1")]


def test_resolve_raises_for_the_caller_to_report(monkeypatch):
    def fail(*a):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(socket.gaierror):
        AD.resolve("nosuch.example", 80)


@pytest.fixture
def dns(monkeypatch):
    """A tiny DNS: reverse and forward tables."""
    reverse = {"192.0.2.1": ("Host.Example.", ["alias.example", "liar.example", "host.example"])}
    forward = {"host.example": ["192.0.2.1"], "alias.example": ["::ffff:192.0.2.1"], "liar.example": ["192.0.2.99"]}

    def gethostbyaddr(ip):
        if ip not in reverse:
            raise socket.herror(1, "Unknown host")
        name, aliases = reverse[ip]
        return name, aliases, [ip]

    def getaddrinfo(name, port, *a):
        if name not in forward:
            raise socket.gaierror(socket.EAI_NONAME, "no")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in forward[name]]
    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_reverse_names_are_checked_forward_lower_case_and_once(dns):
    assert AD.reverse_names("192.0.2.1") == ("host.example", "alias.example")
    assert AD.reverse_names("192.0.2.2") == ()


def test_lookup_names_looks_up_only_what_is_wanted(dns):
    assert AD.lookup_names("192.0.2.1", "192.0.2.1", True, False) == (("host.example", "alias.example"), ())
    assert AD.lookup_names("192.0.2.1", "192.0.2.1", False, True) == ((), ("host.example", "alias.example"))
    assert AD.lookup_names("192.0.2.1", None, True, True)[1] == ()
