"""sockd/client/tools/rfinger.py: rfinger [-l] [-p PORT] [user]@host[@host...].

main() runs in this process against a finger-like peer on loopback (its
port given with -p): which host is asked for what (the last @ splits, -l
asks for /W), the heading, and the exit status; once through a SOCKS 5
peer, which checks the CONNECT and then answers as the finger server.
The local-finger path (no @host) replaces the process with os.execv, so
it runs in a subprocess with ORIG_FINGER pointing at a script of the
test's.
"""

import os
import subprocess
import sys

import pytest

from sockd.client.tools import rfinger

from clientkit import LOCAL, TARGET, Peer, socks5_server, socksenv

assert socksenv     # the fixture, used by name
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def finger_peer(log):
    def handle(c, peer):
        log.append(c.read_until(b"\r\n"))
        c.send(b"Login: jane\r\nPlan: none\r\n")
    return handle


@pytest.mark.parametrize("args,asked", [
    (["jane@H"], b"jane\r\n"),
    (["@H"], b"\r\n"),
    (["-l", "jane@H"], b"/W jane\r\n"),
    (["-l", "@H"], b"/W \r\n"),
    (["jane@far.example@H"], b"jane@far.example\r\n"),       # H is asked to ask far.example
])
def test_who_is_asked_for_what(socksenv, capsys, args, asked):
    log = []
    with Peer(finger_peer(log)) as p:
        argv = ["-p", str(p.port)] + [a.replace("H", LOCAL) for a in args]
        assert rfinger.main(argv) == 0
    assert log == [asked]
    assert capsys.readouterr().out == "[%s]\nLogin: jane\nPlan: none\n" % LOCAL


def test_through_a_socks_server(socksenv, capsys):
    log, reqs = [], []

    def then(c):
        finger_peer(log)(c, None)
    with Peer(socks5_server(then=then, requests=reqs)) as p:
        socksenv.via(p)
        assert rfinger.main(["-p", "7979", "jane@" + TARGET]) == 0
    assert reqs == [([0], (1, 1, TARGET, 7979))] and log == [b"jane\r\n"]
    assert capsys.readouterr().out == "[%s]\nLogin: jane\nPlan: none\n" % TARGET


@pytest.mark.parametrize("args,status,err", [
    (["jane@"], 2, "rfinger: missing host after '@'"),
    (["-p", "nosuchservice", "jane@h.invalid"], 1, "rfinger: bad port: nosuchservice"),
])
def test_mistakes(socksenv, capsys, args, status, err):
    assert rfinger.main(args) == status
    assert capsys.readouterr().err.splitlines()[-1] == err


def test_a_refusal_is_reported(socksenv, capsys):
    socksenv.conf("deny ALL\n")
    assert rfinger.main(["jane@" + TARGET]) == 1
    out, err = capsys.readouterr()
    assert out == "[%s]\n" % TARGET
    assert err.splitlines()[-1].startswith("rfinger: connect to %s port 79 refused: %s:1: denied by 'deny ALL'"
                                           % (TARGET, socksenv.path))


def test_argument_errors_are_argparse_usage(capsys):
    with pytest.raises(SystemExit) as ei:
        rfinger.main(["a@b", "c@d"])
    assert ei.value.code == 2 and "usage: rfinger" in capsys.readouterr().err


def test_without_a_host_the_local_finger_runs(tmp_path):
    fake = tmp_path / "finger"
    fake.write_text("#!/bin/sh\necho \"local finger: $*\"\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=ROOT, ORIG_FINGER=str(fake), SOCKS_CONF=str(tmp_path / "none"))
    code = "import sys; from sockd.client.tools import rfinger; sys.exit(rfinger.main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "-l", "jane"], capture_output=True, text=True, timeout=60,
                       env=env)
    assert (r.returncode, r.stdout) == (0, "local finger: -l jane\n"), r.stderr


def test_without_a_host_and_no_local_finger(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ORIG_FINGER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rfinger.main(["jane"]) == 1
    assert capsys.readouterr().err == "rfinger: no host given and no local finger program (set ORIG_FINGER)\n"
