"""Issue 12, item 7: ``methods username`` means passwords required, for
SOCKS 4 too.

A real sockd with ``methods username``, a passwd file (bcrypt, cost 4)
and ``permit *=tb 0/0``; curl is the client (``-x socks4://tb@...``,
``socks4a://``, ``socks5://tb:PASSWORD@``), with raw SOCKS 4 requests for
the exact reply codes and BIND.  Without ``socks4 trust-userid yes`` a
SOCKS 4 or 4A client that merely claims to be tb is refused with 91 and
the log says why, naming the methods line (line 2); with it, it is served (and the
rules still judge its USERID); SOCKS 5 needs the password either way; with
``none`` among the methods nothing changes.
"""

import socket
import struct
import subprocess

import bcrypt
import pytest

import helpers
from helpers import need

PASSWORD = "tb-secret"
REFUSAL = (r"refused -- %s from tb\(unknown\)@127\.0\.0\.1 to %s \(\S+\) by \S+sockd0\.conf:2: "
           r"a SOCKS 4 USERID is no password, and methods requires one \(socks4 trust-userid no\)")


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("tb:%s\n" % bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode())
    return path


def curl(proxy_url, url):
    """curl through the proxy: (exit status, body, stderr)."""
    r = subprocess.run([need("curl"), "-sS", "--max-time", "10", "-x", proxy_url, url], capture_output=True,
                       text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def socks4_bind(proxy, user):
    """A SOCKS 4 BIND; the first reply's code."""
    with socket.create_connection(proxy, 10) as s:
        s.sendall(struct.pack("!BBH4s", 4, 2, 21, socket.inet_aton("127.0.0.1")) + user.encode() + b"\0")
        return helpers.recv_exact(s, 8)[1]


def urls(s, www):
    proxy = "127.0.0.1:%d" % s.port
    return proxy, www.url("hello.txt"), www.url("hello.txt", host="localhost")


def test_socks4_is_refused_when_every_method_needs_a_password(start_sockd, www, passwd):
    s = start_sockd("listen 127.0.0.1:0\nmethods username\npasswd %s\npermit *=tb 0/0\n" % passwd)
    proxy, url, named = urls(s, www)
    code, body, err = curl("socks4://tb@" + proxy, url)
    assert code != 0 and body == "", "SOCKS 4 without a password was served: %r" % body
    s.wait_log(REFUSAL % ("Connect", r"127\.0\.0\.1"))
    code, body, err = curl("socks4a://tb@" + proxy, named)
    assert code != 0 and body == "", "SOCKS 4A without a password was served: %r" % body
    s.wait_log(REFUSAL % ("Connect", "localhost"))
    c, reply = helpers.socks4_connect(s.addr, "127.0.0.1", www.port, "tb")
    c.close()
    assert reply == 91
    c, reply = helpers.socks4_connect(s.addr, "127.0.0.1", www.port, "tb", hostname="localhost")
    c.close()
    assert reply == 91
    assert socks4_bind(s.addr, "tb") == 91
    s.wait_log(REFUSAL.replace(" to ", " for ") % ("Bind", r"127\.0\.0\.1"))
    # SOCKS 5: the password is what serves it
    assert curl("socks5://tb:%s@%s" % (PASSWORD, proxy), url)[:2] == (0, "hello through sockd\n")
    code, body, err = curl("socks5://" + proxy, url)
    assert code != 0 and body == ""
    s.wait_log(r"refused -- no acceptable authentication method from 127\.0\.0\.1")


def test_socks4_is_served_when_the_configuration_trusts_userids(start_sockd, www, passwd):
    s = start_sockd("methods username\npasswd %s\nsocks4 trust-userid yes\npermit *=tb 0/0\n" % passwd)
    proxy, url, named = urls(s, www)
    assert curl("socks4://tb@" + proxy, url)[:2] == (0, "hello through sockd\n")
    assert curl("socks4a://tb@" + proxy, named)[:2] == (0, "hello through sockd\n")
    # the rules still judge the USERID
    c, reply = helpers.socks4_connect(s.addr, "127.0.0.1", www.port, "mallory")
    c.close()
    assert reply == 91
    s.wait_log(r"refused -- Connect from mallory\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 \(\d+\): no matching rule")
    assert curl("socks5://tb:%s@%s" % (PASSWORD, proxy), url)[:2] == (0, "hello through sockd\n")
    assert "USERID is no password" not in s.log()


def test_with_none_among_the_methods_socks4_is_served_as_before(start_sockd, www, passwd):
    s = start_sockd("methods none username\npasswd %s\npermit *=tb 0/0\n" % passwd)
    proxy, url, named = urls(s, www)
    assert curl("socks4://tb@" + proxy, url)[:2] == (0, "hello through sockd\n")
    assert curl("socks4a://tb@" + proxy, named)[:2] == (0, "hello through sockd\n")
    assert "USERID is no password" not in s.log()
