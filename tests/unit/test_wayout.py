"""wayout: the socks.conf grammar that the client library and sockd's
``upstream FILE`` share -- URL servers, credentials that never show, and
the server's decision (no always-direct addresses, no default server).
The classic grammar's own cases are in test_client_conf.py."""

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import config as C
from sockd import rules as R
from sockd import wayout as W


def conf(text, path="up.conf"):
    return W.parse_text(text, path)


@pytest.mark.parametrize("tok, kind, host, port, user, password, label", [
    ("socks5://up1:1081", "socks5", "up1", 1081, None, None, "socks5://up1:1081"),
    ("socks5h://up1", "socks5h", "up1", 1080, None, None, "socks5h://up1:1080"),
    ("socks4://10.0.0.1:1080", "socks4", "10.0.0.1", 1080, None, None, "socks4://10.0.0.1:1080"),
    ("socks4a://[2001:db8::1]:1090", "socks4a", "2001:db8::1", 1090, None, None, "socks4a://[2001:db8::1]:1090"),
    ("http://proxy.example:3128", "http", "proxy.example", 3128, None, None, "http://proxy.example:3128"),
    ("SOCKS5://u:pw9@up1:1", "socks5", "up1", 1, "u", "pw9", "socks5://up1:1"),
    ("http://al%40ice:p%3Aw%2Cd@proxy:8080/", "http", "proxy", 8080, "al@ice", "p:w,d", "http://proxy:8080"),
    ("up2:1082", "socks", "up2", 1082, None, None, "up2:1082"),
    ("socks5://up1:1081?pipeline", "socks5", "up1", 1081, None, None, "socks5://up1:1081?pipeline"),
    ("socks5h://u:a?b@up1/?pipeline", "socks5h", "up1", 1080, "u", "a?b", "socks5h://up1:1080?pipeline"),
])
def test_servers_by_url_and_classic(tok, kind, host, port, user, password, label):
    s = W.parse_server(tok)
    assert (s.kind, s.host, s.port, s.user, s.password, s.label) == (kind, host, port, user, password, label)
    assert s == (host, port) and isinstance(s, tuple)
    assert s.remote_names is (kind in ("socks", "socks4a", "socks5h", "http"))
    assert "p:w" not in repr(s) and (password is None or password not in s.label)
    assert s.pipeline is tok.endswith("?pipeline")


@pytest.mark.parametrize("tok, why", [
    ("ftp://x:1", "unknown kind of server"),
    ("http://proxy", "needs its port"),
    ("socks4://u:p@x:1", "SOCKS 4 has no password"),
    ("socks5://user@x:1", "USER:PASSWORD@"),
    ("socks5://x:0", "bad server port"),
    ("socks5://%s:p@x:1" % ("u" * 256), "at most 255 bytes"),
    ("socks5://x:1?fast", "unknown server option 'fast'"),
    ("socks5://x:1?pipeline&x", "unknown server option 'x'"),
    ("socks4://x:1?pipeline", "?pipeline is for SOCKS 5 servers"),
    ("http://x:1?pipeline", "?pipeline is for SOCKS 5 servers"),
])
def test_bad_urls(tok, why):
    with pytest.raises(C.Bad) as e:
        W.parse_server(tok)
    assert why in str(e.value)


def test_a_password_never_shows_in_an_entry_or_an_error():
    c = conf("sockd @=socks5://alice:s3cret@up1:1080,http://bob:hunter2@px:3128 10.0.0.0/8\n")
    e = c.entries[0]
    assert "s3cret" not in e.text and "hunter2" not in e.text
    assert e.text == "sockd @=socks5://alice:***@up1:1080,http://bob:***@px:3128 10.0.0.0/8"
    assert [s.password for s in e.servers] == ["s3cret", "hunter2"]
    with pytest.raises(W.WayoutError) as err:
        conf("sockd @=socks5://alice:s3cret@up1:0 10.0.0.0/8\n")
    assert "s3cret" not in str(err.value) and "alice:***@" in str(err.value)


def test_mask_credentials():
    assert W.mask_credentials("a socks5://u:pw@h:1,http://v:x@y:2 b") == "a socks5://u:***@h:1,http://v:***@y:2 b"
    assert W.mask_credentials("up1:1080 socks5://h:1") == "up1:1080 socks5://h:1"


def test_the_server_decides_without_always_direct_and_without_default_servers():
    c = conf("deny 10.9.0.0/16\nsockd @=socks5://up1:1081 10.0.0.0/8\ndirect ALL\n")
    key = R.ip_key
    d = W.decide_server(c, None, key("127.0.0.1"), 80)
    assert d.action == W.DIRECT and d.entry.line == 3        # loopback is not always direct for sockd
    d = W.decide_server(c, None, key("10.1.2.3"), 80)
    assert d.action == W.SOCKD and d.servers[0].label == "socks5://up1:1081"
    assert d.reason == "up.conf:2: via sockd at socks5://up1:1081"
    d = W.decide_server(c, None, key("10.9.1.1"), 80)
    assert d.action == W.DENY and "up.conf:1: denied by 'deny 10.9.0.0/16'" == d.reason
    assert W.decide_server(None, None, key("10.1.2.3"), 80).action == W.DIRECT
    # the client library's decide keeps the classic always-direct addresses
    assert W.decide(c, None, key("127.0.0.1"), 80).entry is None


def test_users_and_names_decide_the_way_out():
    c = conf("sockd@http://px:3128 *=alice .example.org\ndirect ALL\n")
    d = W.decide_server(c, "alice@SOCKS.TEST", (0, 0), 443, names=("www.example.org",))
    assert d.action == W.DIRECT          # *= here compares whole names, as socks.conf always has
    d = W.decide_server(c, "alice", (0, 0), 443, names=("www.example.org",))
    assert d.action == W.SOCKD and d.servers[0].kind == "http"


def test_server_problems_and_credentials():
    c = conf("sockd 10.0.0.0/8\nsockd@up1 ALL\n")
    assert W.server_problems(c) == [("up.conf", 1, "a sockd line needs its servers here (@=SERVER,... or "
                                                   "sockd@SERVER)")]
    assert W.has_credentials(c) is None
    c = conf("direct 10.0.0.0/8\nsockd@socks5://u:p@up1 ALL\n")
    assert W.has_credentials(c).line == 2


@given(st.text(min_size=1, max_size=20, alphabet=st.characters(blacklist_categories=("Cs",))),
       st.text(min_size=0, max_size=20, alphabet=st.characters(blacklist_categories=("Cs",))))
def test_any_credentials_round_trip_through_percent_encoding_and_never_show(user, password):
    tok = "socks5://%s:%s@up1:1080" % (urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe=""))
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        return
    s = W.parse_server(tok)
    assert (s.user, s.password) == (user, password)
    assert W.mask_credentials("sockd@" + tok) == "sockd@socks5://%s:***@up1:1080" % urllib.parse.quote(user, safe="")


def test_a_pipelined_server_in_a_way_out_file_and_its_mistakes_by_line():
    c = conf("sockd @=socks5://up1:1081?pipeline,socks5://up2:1082 ALL\n")
    assert [x.pipeline for x in c.entries[0].servers] == [True, False]
    with pytest.raises(W.WayoutError) as err:
        conf("direct 10.0.0.0/8\nsockd @=socks4://up1:1081?pipeline ALL\n")
    assert "up.conf:2:" in str(err.value) and "?pipeline is for SOCKS 5 servers" in str(err.value)
