"""The client programs as a user runs them: test_socks_conf, and the
SOCKS-ified clients against real local servers, through a real sockd."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

BIN = os.path.join(ROOT, "bin")
PYTHON = sys.executable

CONF = """\
deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %u' root
direct 10.0.0.0 255.0.0.0
deny ALL eq telnet
sockd @=fw1:1081,fw2 .example.test
sockd ALL
"""


def tool(name, *args, env=None, stdin=None, timeout=60):
    e = dict(os.environ)
    for var in ("SOCKS_SERVER", "SOCKS_CONF", "SOCKS_BANNER"):
        e.pop(var, None)
    e.update(env or {})
    return subprocess.run([PYTHON, os.path.join(BIN, name)] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=e, input=stdin)


@pytest.fixture
def conf_file(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text(CONF)
    return str(p)


def test_socks_conf_deny_line(conf_file):
    r = tool("test_socks_conf", "-C", conf_file, "clyde", "10.1.2.3", "ftp")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("USER:clyde, DST:10.1.2.3, PORT:21\n"
                        "Line 1: deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %%u' root\n"
                        "*** Denied: %s:1: denied by 'deny *=bonnie,clyde 10.0.0.0 255.0.0.0'\n" % conf_file)


def test_socks_conf_direct_via_and_default_server(conf_file):
    r = tool("test_socks_conf", "-C", conf_file, "jane", "10.1.2.3", "80")
    assert r.returncode == 1 and r.stdout.endswith("*** Direct: %s:2: direct\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "www.example.test", "http")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "USER:jane, DST:www.example.test, PORT:80"
    assert r.stdout.endswith("Line 4: sockd @=fw1:1081,fw2 .example.test\n"
                             "*** Via sockd at fw1:1081, fw2:1080 (%s:4)\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "80", env={"SOCKS_SERVER": "gw:1090"})
    assert r.returncode == 1 and r.stdout.endswith("*** Via sockd at gw:1090 (%s:5)\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "80")
    assert r.returncode == 0 and "SOCKS_SERVER is not set" in r.stdout
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "telnet")
    assert r.returncode == 0 and "*** Denied: %s:3: denied by 'deny ALL eq telnet'" % conf_file in r.stdout


def test_socks_conf_no_match_no_file_and_local_host(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text("direct 10.0.0.0/8\n")
    r = tool("test_socks_conf", "jane", "192.0.2.1", "80", env={"SOCKS_CONF": str(p)})
    assert r.returncode == 0 and r.stdout.endswith("*** No match with any line. Access denied.\n")
    r = tool("test_socks_conf", "jane", "127.0.0.1", "80", env={"SOCKS_CONF": str(p)})
    assert r.returncode == 1 and "always direct" in r.stdout
    r = tool("test_socks_conf", "-C", str(tmp_path / "absent"), "jane", "192.0.2.1", "80")
    assert r.returncode == 1 and "*** Direct: no socks.conf" in r.stdout


def test_socks_conf_errors(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text("direct 10.0.0.0/8\nsockd @=fw:0 ALL\n")
    r = tool("test_socks_conf", "-C", str(p), "jane", "192.0.2.1", "80")
    assert r.returncode == 2
    assert r.stderr == "%s:2: bad server port: 0 (near 'fw:0')\n" % p
    r = tool("test_socks_conf", "-C", str(p), "jane", "192.0.2.1", "no-such-service")
    assert r.returncode == 2 and "unknown service name" in r.stderr
    r = tool("test_socks_conf", "jane")
    assert r.returncode == 2 and "usage" in r.stderr and "Traceback" not in r.stderr
