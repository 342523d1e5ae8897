"""sockd/client/tools/test_socks_conf.py: test_socks_conf [-C FILE] USER DST PORT.

main() runs in this process on socks.conf files in the test's directory:
the lines examined, the deciding one, the verdict in the classic words,
the exit statuses (1 allowed, 0 denied, 2 usage or configuration error),
and hypothesis for arguments that can be hostile (any user, port text and
address: a status, never a traceback).  Destinations are addresses,
``localhost`` (from /etc/hosts) or names no name server is asked about.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd.client.tools import test_socks_conf as T

from clientkit import NONAME, socksenv

assert socksenv     # the fixture, used by name
CONF = """\
deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %u' root
direct 10.0.0.0 255.0.0.0
deny ALL eq telnet
sockd @=fw1:1081,[::1]:1082 .invalid
sockd ALL
"""


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "classic.conf"          # not socksenv's socks.conf
    p.write_text(CONF)
    return str(p)


def run(capsys, *args):
    status = T.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_a_deny_line_with_its_command(socksenv, capsys, conf):
    assert run(capsys, "-C", conf, "clyde", "10.1.2.3", "ftp") == (T.EXIT_DENIED, (
        "USER:clyde, DST:10.1.2.3, PORT:21\n"
        "Line 1: deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %u' root\n"
        "*** Denied: " + conf + ":1: denied by 'deny *=bonnie,clyde 10.0.0.0 255.0.0.0'\n"), "")


def test_direct_via_and_the_default_server(socksenv, capsys, conf):
    status, out, _ = run(capsys, "-C", conf, "jane", "10.1.2.3", "80")
    assert status == T.EXIT_ALLOWED and out.endswith("Line 1: deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : "
                                                     "mail -s 'refused %%u' root\nLine 2: direct 10.0.0.0 "
                                                     "255.0.0.0\n*** Direct: %s:2: direct\n" % conf)
    status, out, _ = run(capsys, "-C", conf, "jane", NONAME, "http")
    assert status == T.EXIT_ALLOWED
    assert out.splitlines()[0] == "USER:jane, DST:%s, PORT:80" % NONAME
    assert out.endswith("Line 4: sockd @=fw1:1081,[::1]:1082 .invalid\n"
                        "*** Via sockd at fw1:1081, [::1]:1082 (%s:4)\n" % conf)
    socksenv.set("SOCKS_SERVER", "gw:1090")
    status, out, _ = run(capsys, "-C", conf, "jane", "192.0.2.1", "80")
    assert status == T.EXIT_ALLOWED and out.endswith("Line 5: sockd ALL\n*** Via sockd at gw:1090 (%s:5)\n" % conf)


def test_no_server_for_a_sockd_line_is_a_denial(socksenv, capsys, conf):
    status, out, _ = run(capsys, "-C", conf, "jane", "192.0.2.1", "80")
    assert status == T.EXIT_DENIED
    assert out.endswith("*** Denied: %s:5: the line names no server (@=) and SOCKS_SERVER is not set\n" % conf)


def test_a_port_rule(socksenv, capsys, conf):
    status, out, _ = run(capsys, "-C", conf, "jane", "192.0.2.1", "telnet")
    assert status == T.EXIT_DENIED and out.endswith("*** Denied: %s:3: denied by 'deny ALL eq telnet'\n" % conf)


def test_no_match_no_file_and_the_local_host(socksenv, capsys, tmp_path):
    p = tmp_path / "narrow.conf"
    p.write_text("direct 10.0.0.0/8\n")
    assert run(capsys, "-C", str(p), "jane", "192.0.2.1", "80") == (T.EXIT_DENIED, (
        "USER:jane, DST:192.0.2.1, PORT:80\nLine 1: direct 10.0.0.0/8\n"
        "*** No match with any line. Access denied.\n"), "")
    status, out, _ = run(capsys, "-C", str(tmp_path / "none.conf"), "jane", "192.0.2.1", "80")
    assert status == T.EXIT_ALLOWED
    assert out.endswith("*** Direct: no socks.conf (%s): every connection is direct\n" % (tmp_path / "none.conf"))
    status, out, _ = run(capsys, "-C", str(p), "jane", "localhost", "80")
    assert status == T.EXIT_ALLOWED and out == (
        "USER:jane, DST:localhost (127.0.0.1), PORT:80\n"
        "*** Direct: the local host and the unspecified address are always direct\n")


def test_the_file_comes_from_minus_c_else_socks_conf(socksenv, capsys, conf):
    socksenv.conf("deny ALL\n")
    assert run(capsys, "jane", "192.0.2.1", "80")[0] == T.EXIT_DENIED
    assert run(capsys, "-C", conf, "jane", "10.1.2.3", "80")[0] == T.EXIT_ALLOWED


def test_warnings_and_names(socksenv, capsys, tmp_path):
    p = tmp_path / "w.conf"
    p.write_text("direct *=/nonexistent/users ALL\nsockd @=fw ALL\n")
    status, out, _ = run(capsys, "-C", str(p), "jane", NONAME + ".", "80")
    assert status == T.EXIT_ALLOWED
    assert out.splitlines()[1:3] == ["DST names: %s" % NONAME,
                                    "Warning: %s:1: Unable to open userfile (/nonexistent/users)" % p]


@pytest.mark.parametrize("text,err", [
    ("direct 10.0.0.1\nsockd\n",
     ["{p}:1: destination address needs a mask (or write it as ADDRESS/PREFIX) (near '10.0.0.1')",
      "{p}:2: missing destination address (write ALL or 0/0 for any) (near 'sockd')"]),
    ("", ["{p}: no entries: every connection would be refused (write 'deny ALL' if that is what you mean)"]),
])
def test_configuration_errors(socksenv, capsys, tmp_path, text, err):
    p = tmp_path / "bad.conf"
    p.write_text(text)
    status, out, got = run(capsys, "-C", str(p), "jane", "10.1.2.3", "80")
    assert (status, out) == (T.EXIT_ERROR, "")
    assert got.splitlines() == [e.format(p=p) for e in err]


def test_a_bad_socks_server_is_a_configuration_error(socksenv, capsys, conf):
    socksenv.set("SOCKS_SERVER", "[::1")
    status, out, err = run(capsys, "-C", conf, "jane", "10.1.2.3", "80")
    assert (status, out) == (T.EXIT_ERROR, "")
    assert err == "SOCKS_SERVER: missing ']' in IPv6 server address (near '[::1')\n"


@pytest.mark.parametrize("port,err", [
    ("nosuch", "test_socks_conf: unknown service name: 'nosuch'\n"),
    ("70000", "test_socks_conf: port number out of range: '70000'\n"),
    ("\u00b2", "test_socks_conf: unknown service name: '?'\n"),
    ("a\x1bb", "test_socks_conf: unknown service name: 'a?b'\n"),          # shown, not obeyed
])
def test_bad_ports(socksenv, capsys, conf, port, err):
    assert run(capsys, "-C", conf, "jane", "10.1.2.3", port) == (T.EXIT_ERROR, "", err)


@pytest.mark.parametrize("args,status", [([], 2), (["a", "b"], 2), (["a", "b", "c", "d"], 2), (["--help"], 0),
                                         (["-C"], 2), (["--bogus", "a", "b", "c"], 2)])
def test_usage(capsys, args, status):
    assert T.main(args) == status
    out, err = capsys.readouterr()
    assert "usage: test_socks_conf" in (out if status == 0 else err)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.text(max_size=12), dst=st.ip_addresses().map(str), port=st.text(max_size=8))
def test_any_arguments_give_a_status(socksenv, capsys, conf, user, dst, port):
    status = T.main(["-C", conf, user, dst, port])
    out, err = capsys.readouterr()
    assert status in (T.EXIT_ALLOWED, T.EXIT_DENIED, T.EXIT_ERROR)
    assert (status == T.EXIT_ERROR) == bool(err) and (status == T.EXIT_ERROR) == (out == "")
    if status != T.EXIT_ERROR:
        assert out.splitlines()[-1].startswith("*** ")
