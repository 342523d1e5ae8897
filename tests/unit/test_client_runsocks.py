"""sockd/client/runsocks.py: runsocks SCRIPT|-m MODULE [ARGS...].

The argument handling (usage, --version, unknown options, a missing
script, a socks.conf mistake) is main() called in this process, with
examples and hypothesis for hostile options; none of these runs a
program.  Running a program is checked through the real launcher
bin/runsocks in a subprocess: the argv, sys.path[0] and __main__ that
python3 would give, socksify() done first, and the exit status passed on.
"""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd.client import core, runsocks, socksified, unsocksify

from clientkit import socksenv

assert socksenv     # the fixture, used by name
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "bin", "runsocks")


@pytest.mark.parametrize("argv,status,out,err", [
    ([], 2, "", runsocks.USAGE),
    (["-h"], 0, runsocks.USAGE, ""),
    (["--help"], 0, runsocks.USAGE, ""),
    (["--version"], 0, "runsocks (sockd) %s\n" % core.__version__, ""),
    (["-m"], 2, "", runsocks.USAGE),
    (["-x", "script.py"], 2, "", "runsocks: unknown option -x\n" + runsocks.USAGE),
    (["--", "script.py"], 2, "", "runsocks: unknown option --\n" + runsocks.USAGE),
    (["/nonexistent/script.py", "a"], 2, "",
     "runsocks: can't open file '/nonexistent/script.py': No such file or directory\n"),
    (["-"], 2, "", "runsocks: can't open file '-': No such file or directory\n"),
])
def test_arguments(socksenv, capsys, argv, status, out, err):
    assert runsocks.main(argv) == status
    assert capsys.readouterr() == (out, err)
    assert not socksified()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=12), max_size=3), st.text(min_size=1, max_size=12))
def test_any_unknown_option_is_a_usage_error(capsys, rest, opt):
    opt = "-" + opt
    if opt in ("-h", "--help", "--version") or opt.startswith("-m"):
        return
    assert runsocks.main([opt] + rest) == 2
    assert capsys.readouterr().err.startswith("runsocks: unknown option ")
    assert not socksified()


def test_a_socks_conf_mistake_stops_runsocks_before_the_program(socksenv, capsys, tmp_path):
    script = tmp_path / "script.py"
    marker = tmp_path / "ran"
    script.write_text("open(%r, 'w').close()\n" % str(marker))
    path = socksenv.conf("direct ALL\ndirect 10.0.0.1\n")
    try:
        assert runsocks.main([str(script)]) == 1
    finally:
        unsocksify()
    err = capsys.readouterr().err           # (the library's own log line may come first: SOCKS_LOG=stderr)
    assert [line for line in err.splitlines() if line.startswith("runsocks:")] == [
        "runsocks: %s:2: destination address needs a mask (or write it as ADDRESS/PREFIX) (near '10.0.0.1')"
        % path]
    assert err.endswith("\n")
    assert not marker.exists()


SHOW = """\
import json, os, socket, sys
import sockd.client.core as core
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__,
                  "bin": any(os.path.abspath(p) == %(bin)r for p in sys.path if p),
                  "socksified": socket.socket is core.socksocket}))
sys.exit(int(sys.argv[-1]))
"""


def run(args, cwd, conf):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKS_")}
    env.update(SOCKS_CONF=conf, SOCKS_LOG="none")
    return subprocess.run([sys.executable, LAUNCHER] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def program(tmp_path):
    d = tmp_path / "prog"
    d.mkdir()
    (d / "show.py").write_text(SHOW % {"bin": os.path.join(ROOT, "bin")})
    return d


def test_a_script_sees_what_python3_would_show_it(program, tmp_path):
    r = run([str(program / "show.py"), "a b", "3"], str(tmp_path), str(tmp_path / "none.conf"))
    assert r.returncode == 3, r.stderr
    got = json.loads(r.stdout)
    assert got == {"argv": [str(program / "show.py"), "a b", "3"], "path0": str(program), "name": "__main__",
                   "bin": False, "socksified": True}


@pytest.mark.parametrize("form", [["-m", "show"], ["-mshow"]])
def test_a_module_sees_what_python3_m_would_show_it(program, tmp_path, form):
    r = run(form + ["x", "0"], str(program), str(tmp_path / "none.conf"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["argv"] == [str(program / "show.py"), "x", "0"]
    assert (got["path0"], got["name"], got["bin"], got["socksified"]) == (str(program), "__main__", False, True)


def test_an_exception_in_the_program_is_its_traceback_and_status_1(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise RuntimeError('boom')\n")
    r = run([str(script)], str(tmp_path), str(tmp_path / "none.conf"))
    assert r.returncode == 1 and r.stderr.rstrip().endswith("RuntimeError: boom") and r.stdout == ""
