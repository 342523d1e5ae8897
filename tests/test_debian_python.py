"""sockd on Debian's own Python stack, the one its package depends on:
/usr/bin/python3 with python3-daemon, python3-bcrypt and
python3-setproctitle from Debian (12: 2.3.2, 3.2.2 and 1.3.1, older than
what pip puts in the venv; hence setup.cfg's python-daemon>=2.3 and
bcrypt>=3.2).  The unit tests of what uses them -- becoming a daemon,
password files and checks, logins, sockd-passwd, the command line, the
serving processes' titles -- run under that interpreter, with the
checkout's sockd and Debian's python3-pytest.  The installed package runs
on the same stack in tests/integration/test_package.py."""

import os
import subprocess

import pytest

from helpers import IN_CI, ROOT

PYTHON = "/usr/bin/python3"
DIST = "/usr/lib/python3/dist-packages/"
MODULES = {"daemon": ("python-daemon", (2, 3)), "bcrypt": ("bcrypt", (3, 2)), "setproctitle": ("setproctitle", (1, 3))}
TESTS = ["tests/unit/test_daemonize.py", "tests/unit/test_passwd.py", "tests/unit/test_auth.py",
         "tests/unit/test_tools.py", "tests/unit/test_cli.py", "tests/unit/test_serving.py"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}

PROBE = """
import importlib, importlib.metadata as md, sys
for mod, dist in %r:
    m = importlib.import_module(mod)
    print(mod, md.version(dist), m.__file__)
import pytest, hypothesis
print("pytest", pytest.__version__, pytest.__file__)
"""


def debian_python():
    """Debian's interpreter with the packages, or skip (fail in CI)."""
    probe = PROBE % [(m, d) for m, (d, _) in MODULES.items()]
    try:
        r = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=60, env=ENV)
    except OSError as exc:
        r = None
        why = str(exc)
    else:
        why = r.stderr.strip().splitlines()[-1:] if r.returncode else ""
    if r is None or r.returncode:
        msg = "Debian's python3 with python3-daemon, -bcrypt, -setproctitle, -pytest, -hypothesis: %s " \
              "(make test-deps installs them)" % why
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}


def test_the_unit_tests_of_daemon_passwords_and_titles_pass_on_debians_packages():
    found = debian_python()
    for mod, (dist, least) in MODULES.items():
        version, path = found[mod]
        assert path.startswith(DIST), (mod, path)                 # Debian's, not a pip install
        assert tuple(int(x) for x in version.split(".")[:2]) >= least, (dist, version)
    print("Debian's stack: " + ", ".join("%s %s" % (MODULES[m][0], found[m][0]) for m in MODULES))
    r = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + TESTS, capture_output=True,
                       text=True, timeout=600, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout.splitlines()[-1] and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
