"""sockd/client/shell.py: the ``: command`` of a socks.conf line.

submit() is called for real: /bin/sh runs each command, writing into the
test's directory, and the test waits for the library's one runner to
drain (bounded).  Checked: the client-side % codes, values cut to the safe
set (hypothesis: nothing in a value reaches the shell as syntax), that
submit() never waits for the command, failures logged on the client's
logger, and -- in a subprocess -- that a program about to exit waits for
a command still running.
"""

import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd.client import shell

from clientkit import WAIT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VALUES = {"A": "me.example", "a": "10.0.0.5", "c": "udp", "p": "4242", "S": "domain", "s": "53",
          "U": "login", "u": "joe", "Z": "dst.example", "z": "10.9.9.9"}


def drain():
    assert shell._runner.drain(WAIT), "a shell command still runs after %s s" % WAIT


def test_every_client_code_is_expanded(tmp_path):
    out = tmp_path / "out"
    shell.submit("echo %%A %%a %%c %%p %%S %%s %%U %%u %%Z %%z %%%% %%x. > %s" % out, VALUES, "socks.conf:1")
    drain()
    assert out.read_text() == "me.example 10.0.0.5 udp 4242 domain 53 login joe dst.example 10.9.9.9 % .\n"


def test_one_runner_for_the_process(tmp_path):
    shell.submit("true", VALUES, "a")
    first = shell._runner
    shell.submit("true", VALUES, "b")
    assert shell._runner is first and first.limit == 4
    drain()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=30))
def test_nothing_in_a_value_reaches_the_shell_as_syntax(tmp_path, hostile):
    out = tmp_path / "out"
    if out.exists():
        out.unlink()
    shell.submit("echo x%%uy > %s" % out, dict(VALUES, u=hostile), "socks.conf:1")
    drain()
    got = out.read_text()
    assert got.startswith("x") and got.endswith("y\n") and got.count("\n") == 1
    assert set(got[1:-2]) <= shell.S.SAFE | {"_"}
    assert len(got) == len(hostile) + 3
    assert sorted(os.listdir(tmp_path)) == ["out"]          # the value made no file of its own


@pytest.mark.serial
def test_submit_does_not_wait_for_the_command(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    shell.submit("sleep 0.15; echo done > %s" % out, VALUES, "socks.conf:1")
    assert time.monotonic() - t0 < 0.1 and not out.exists()
    drain()
    assert out.read_text() == "done\n"


@pytest.mark.parametrize("template,logged", [
    ("exit 3", "shell command of socks.conf:7 exited with status 3: exit 3"),
    ("%u", "shell command of socks.conf:7 exited with status 127: joe"),
    ("; ;", 'error -- shell command "; ;" contains no alphanumeric characters.'),
])
def test_failures_are_logged_on_the_client_logger(caplog, template, logged):
    with caplog.at_level("ERROR", logger="sockd.client"):
        shell.submit(template, VALUES, "socks.conf:7")
        drain()
    assert [r.getMessage() for r in caplog.records if r.name == "sockd.client"] == [logged]


def test_a_program_about_to_exit_waits_for_its_commands(tmp_path):
    out = tmp_path / "out"
    code = ("from sockd.client import shell\n"
            "shell.submit('sleep 0.1; echo %%c > %s', {'c': 'connect'}, 'x:1')\n" % out)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "connect\n"


def test_a_trailing_backslash_cannot_unbalance_the_template(tmp_path):
    """SAFE has no backslash (tcp_wrappers' ok_chars never had one: the
    backslash in percent_x.c continues the C string literal), so a value
    ending in one cannot escape the template's closing quote."""
    out = tmp_path / "out"
    shell.submit('echo "%%Z" > %s' % out, dict(VALUES, Z="x\\"), "socks.conf:1")
    drain()
    assert out.read_text() == "x_\n"
