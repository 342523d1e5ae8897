"""make install (PREFIX and DESTDIR) and pip install give working commands."""

import os
import subprocess
import sys

from helpers import ROOT


def test_make_install_with_destdir(tmp_path):
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest, "PREFIX=/usr/local",
                        "PYTHON=%s" % sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = dest / "usr/local/bin/sockd"
    assert exe.exists()
    assert (dest / "usr/local/share/man/man8/sockd.8").exists()
    assert (dest / "usr/local/share/man/man5/sockd.conf.5").exists()
    out = subprocess.run([str(exe), "-ver"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("sockd "), out.stderr
    # the installed tree runs with its own copy of the dependencies
    out = subprocess.run([str(exe), "-V", "-f", os.path.join(ROOT, "etc", "sockd.conf")],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def test_pip_install_from_checkout(tmp_path):
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(venv / "bin/sockd"), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("sockd ")
