"""sockd/client/tools/rwhois.py: rwhois [-h HOST] [-p PORT] QUERY...

main() runs in this process against a whois-like peer on loopback: the
query words joined into one line, the server from -h or $WHOIS_SERVER,
the port from -p, the exit status, and -h being the host (not help).
The fall-back to whois.iana.org is checked as a constant and in --help
only: reaching it would ask a name server off this host.
"""

import pytest

from sockd.client.tools import rwhois

from clientkit import LOCAL, Peer, socksenv

assert socksenv     # the fixture, used by name


def whois_peer(log):
    def handle(c, peer):
        log.append(c.read_until(b"\r\n"))
        c.send(b"% IANA WHOIS server\r\ndomain: EXAMPLE\r\n")
    return handle


def test_a_query_to_the_server_of_minus_h(socksenv, capsys, monkeypatch):
    monkeypatch.setenv("WHOIS_SERVER", "whois.invalid")       # -h wins
    log = []
    with Peer(whois_peer(log)) as p:
        assert rwhois.main(["-h", LOCAL, "-p", str(p.port), "example", "com"]) == 0
    assert log == [b"example com\r\n"]
    assert capsys.readouterr().out == "% IANA WHOIS server\ndomain: EXAMPLE\n"


def test_the_server_of_whois_server(socksenv, capsys, monkeypatch):
    monkeypatch.setenv("WHOIS_SERVER", LOCAL)
    log = []
    with Peer(whois_peer(log)) as p:
        assert rwhois.main(["-p", str(p.port), "=x"]) == 0
    assert log == [b"=x\r\n"]


def test_the_default_server():
    assert rwhois.DEFAULT_SERVER == "whois.iana.org"


def test_help_is_long_only_and_names_the_default(capsys):
    with pytest.raises(SystemExit) as ei:
        rwhois.main(["--help"])
    out = capsys.readouterr().out
    assert ei.value.code == 0 and "whois.iana.org" in out and "-h HOST" in out


@pytest.mark.parametrize("args", [[], ["-h"], ["-h", "x"], ["-p", "43"]])
def test_a_query_is_needed(capsys, args):
    with pytest.raises(SystemExit) as ei:
        rwhois.main(args)
    assert ei.value.code == 2 and "usage: rwhois" in capsys.readouterr().err


def test_failures_are_status_1(socksenv, capsys):
    socksenv.conf("deny ALL\n")
    assert rwhois.main(["-h", "127.0.0.2", "q"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "rwhois: connect to 127.0.0.2 port 43 refused: %s:1: denied by 'deny ALL'" % socksenv.path)
    assert rwhois.main(["-h", LOCAL, "-p", "nosuchservice", "q"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "rwhois: bad port: nosuchservice"
