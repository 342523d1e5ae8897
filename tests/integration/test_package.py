"""The Debian package, as an administrator meets it: built by `make deb`
(dpkg-buildpackage) in a clean copy of the checkout, judged by lintian,
installed with dpkg -i, started by its init script (there is no systemd
running here), used through curl with a password (Debian's python3-bcrypt)
by workers running as the package's user, stopped, removed (the conffile
stays) and purged (nothing is left but the system user, as documented).

This installs a package on the machine the tests run on: acceptable only
because the test installs and purges it itself, and refuses to start when
sockd is installed already or /etc/sockd.conf exists (a purge would take
an administrator's file).  Whatever it installed or made is removed at the
end, even when it fails: the package (purged), the system user when the
test's install created it, the policy-rc.d it put in place.

The .deb is built once per session.  Marked slow (about 20 s); it runs in
`make test` and under CI=true like every other test.
"""

import fcntl
import grp
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

import helpers
from helpers import IN_CI, ROOT, need, wait_for
from opshelp import alive, children_of, cmdline, read_pid, stop_pid, uid_of

pytestmark = pytest.mark.slow

POLICY = "/usr/sbin/policy-rc.d"
CONF = "/etc/sockd.conf"
PIDFILE = "/run/sockd.pid"
PASSWORD = "battery staple"


def run(cmd, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check:
        assert r.returncode == 0, "%s: %s%s" % (" ".join(cmd), r.stdout, r.stderr)
    return r


def installed():
    r = run(["dpkg-query", "-W", "-f=${Status}", "sockd"], check=False)
    return r.returncode == 0 and r.stdout.strip()


def refuse(why):
    """This machine is not one the test may install on: skip (fail in CI)."""
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def deb(tmp_path_factory):
    """The package, built once per run: `make deb` in a copy of the checkout
    as git sees it (tracked and new files; no .venv, no build products).
    Under pytest-xdist each worker has its own session, so the first to get
    here builds into the run's shared temporary directory, under a lock, and
    the other takes that build.  Returns (the .deb, the .changes, the
    seconds the build took)."""
    for program in ("git", "make", "dpkg-buildpackage", "dh", "lintian"):
        need(program)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / "sockd-deb.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / "sockd-deb.json"
        if done.exists():
            pkg, changes, took = json.loads(done.read_text())
            return pathlib.Path(pkg), pathlib.Path(changes), took
        pkg, changes, took = build_deb(tmp_path_factory)
        done.write_text(json.dumps([str(pkg), str(changes), took]))
        return pkg, changes, took


def build_deb(tmp_path_factory):
    top = tmp_path_factory.mktemp("deb")
    src, out = top / "src", top / "out"
    src.mkdir()
    files = run(["git", "-C", ROOT, "ls-files", "-z", "-co", "--exclude-standard"]).stdout
    names = [n for n in files.split("\0") if n and os.path.lexists(os.path.join(ROOT, n))]
    for n in names:
        dest = src / n
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, n), dest, follow_symlinks=False)
    t0 = time.monotonic()
    r = run(["make", "-s", "deb", "DEB_OUT=%s" % out], timeout=600, check=False, cwd=str(src))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    (pkg,) = out.glob("sockd_*_all.deb")
    (changes,) = out.glob("sockd_*.changes")
    assert not (src / "debian" / "sockd").exists()           # built in make deb's own copy
    return pkg, changes, took


def test_lintian_finds_no_error(deb):
    pkg, changes, took = deb
    r = run([need("lintian"), "--fail-on", "error", "-I", str(changes)], timeout=300, check=False)
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWIXPO]: ", line)]
    assert r.returncode == 0 and not any(t.startswith("E:") for t in tags), r.stdout + r.stderr
    # what it says, for the record: warnings would be fixed, an info tag may stay
    assert not any(t.startswith("W:") for t in tags), tags
    assert took < 120, "the package took %.0fs to build" % took


def test_package_contents(deb):
    pkg, _, _ = deb
    info = run(["dpkg-deb", "-f", str(pkg), "Architecture", "Depends", "Suggests", "Pre-Depends"]).stdout
    assert "Architecture: all" in info
    for dep in ("python3-daemon (>= 2.3)", "python3-bcrypt (>= 3.2)", "python3-setproctitle", "adduser"):
        assert dep in info
    assert "Suggests: python3-gssapi" in info
    files = run(["dpkg-deb", "-c", str(pkg)]).stdout
    for path in ("./usr/sbin/sockd", "./usr/sbin/sockd-passwd", "./usr/sbin/test_sockd_conf", "./usr/bin/runsocks",
                 "./usr/sbin/sockd-accounting", "./usr/share/man/man8/sockd-accounting.8.gz",
                 "./etc/sockd.conf", "./etc/init.d/sockd", "./lib/systemd/system/sockd.service",
                 "./lib/systemd/system/sockd.socket", "./usr/share/man/man8/sockd.8.gz",
                 "./usr/share/man/man5/sockd.conf.5.gz", "./usr/lib/python3/dist-packages/sockd/master.py"):
        assert re.search(r" %s( |$)" % re.escape(path), files, re.M), path


@pytest.fixture
def host(tmp_path):
    """The machine, made ready for the install and put back afterwards:
    nothing started by dpkg (policy-rc.d), and after the test the package
    purged (its server stopped by PID first), the user the install made
    deleted, our policy-rc.d removed."""
    for program in ("dpkg", "adduser", "deluser", "curl", "systemd-analyze"):
        need(program)
    if installed():
        refuse("a sockd package is installed on this machine (%s); the test installs and purges its own"
               % installed())
    if os.path.lexists(CONF):
        refuse("%s exists: purging the test's package would remove it" % CONF)
    user_before = user_exists()
    made_policy = not os.path.exists(POLICY)
    if made_policy:
        with open(POLICY, "w") as f:
            f.write("#!/bin/sh\n# sockd's package test: no daemon starts at installation\nexit 101\n")
        os.chmod(POLICY, 0o755)
    try:
        yield
    finally:
        stop_pid(read_pid(PIDFILE), timeout=40)
        if installed():
            run(["dpkg", "--purge", "sockd"], check=False)
        if not user_before and user_exists():
            run(["deluser", "--system", "--quiet", "sockd"], check=False)
            if group_exists():
                run(["delgroup", "--system", "--quiet", "sockd"], check=False)
        if made_policy:
            os.unlink(POLICY)


def user_exists():
    try:
        pwd.getpwnam("sockd")
        return True
    except KeyError:
        return False


def group_exists():
    try:
        grp.getgrnam("sockd")
        return True
    except KeyError:
        return False


def owner(path):
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def init(action):
    return run(["/etc/init.d/sockd", action], timeout=60, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.mark.machine("dpkg")          # installs the package here: /etc/sockd.conf, its user, its init script
def test_install_start_curl_remove_purge(deb, host, tmp_path, www):
    pkg, _, _ = deb
    before = named_sockd()
    run(["dpkg", "-i", str(pkg)], timeout=300)
    assert installed() == "install ok installed"
    listed = run(["dpkg", "-L", "sockd"]).stdout.split()
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "sockd"]).stdout
    assert re.search(r"^ /etc/sockd\.conf [0-9a-f]{32}$", conffiles, re.M), conffiles
    # the loopback-only default, its workers as the package's user
    text = open(CONF).read()
    assert "listen 127.0.0.1:1080" in text.splitlines() and "user sockd" in text.splitlines()
    user = pwd.getpwnam("sockd")
    assert user.pw_uid < 1000 and user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert owner("/var/lib/sockd") == ("root", "sockd", 0o750)
    assert owner("/var/cache/sockd") == ("root", "root", 0o700)
    assert os.path.exists("/usr/share/man/man8/sockd.8.gz") and os.path.exists("/usr/share/man/man5/sockd.conf.5.gz")
    # the installed units verify with the installed program and pages
    r = run([need("systemd-analyze"), "verify", "/lib/systemd/system/sockd.socket",
             "/lib/systemd/system/sockd.service"], check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    assert not os.path.exists(PIDFILE)                    # policy-rc.d: dpkg did not start it
    # sockd.service enabled (for the next boot under systemd), the socket unit not
    wants = "/etc/systemd/system/multi-user.target.wants/"
    assert os.path.islink(wants + "sockd.service") and not os.path.lexists("/etc/systemd/system/sockets.target.wants/"
                                                                          "sockd.socket")

    # inetd mode of the installed program on the file as installed: its
    # cache goes to /var/cache/sockd, which it trusts
    inetd_once()
    (cached,) = wait_for(lambda: os.listdir("/var/cache/sockd"), 10, what="inetd mode's cache in /var/cache/sockd")
    assert owner(os.path.join("/var/cache/sockd", cached)) == ("root", "root", 0o600)

    # the administrator's edit of the conffile: a free port (1080 may be
    # taken here), logins with a password file made by the installed sockd-passwd
    port = helpers.free_port()
    users = tmp_path / "users"
    r = subprocess.run(["/usr/sbin/sockd-passwd", "-c", "-i", "-C", "5", str(users), "alice"], input=PASSWORD + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert open(users).read().startswith("alice:$2b$05$")
    with open(CONF, "w") as f:
        f.write(text.replace("listen 127.0.0.1:1080", "listen 127.0.0.1:%d" % port)
                + "methods username\npasswd %s\n" % users)
    r = run(["/usr/sbin/sockd", "-V", "-f", CONF], check=False)
    assert r.returncode == 0, r.stderr

    # the init script: python-daemon detaches it, the shell hears it serves
    r = init("start")
    assert r.returncode == 0, r.stdout + r.stderr
    pid = read_pid(PIDFILE)
    assert "Starting sockd: sockd (pid %d)." % pid in r.stdout
    assert cmdline(pid) == "sockd: master -f /etc/sockd.conf" and uid_of(pid) == 0
    workers = wait_for(lambda: children_of(pid), 10, what="the workers")
    assert all(uid_of(w) == user.pw_uid for w in workers)
    assert init("status").returncode == 0
    url = www.url("hello.txt", "localhost")
    curl = need("curl")
    r = run([curl, "-sS", "--max-time", "10", "-x", "socks5h://alice:%s@127.0.0.1:%d" % (
        PASSWORD.replace(" ", "%20"), port), url], check=False)
    assert r.returncode == 0 and r.stdout == "hello through sockd\n", r.stderr
    r = run([curl, "-sS", "--max-time", "10", "-x", "socks5h://alice:wrong@127.0.0.1:%d" % port, url], check=False)
    assert r.returncode != 0
    r = init("stop")
    assert r.returncode == 0 and "Stopping sockd: sockd." in r.stdout, r.stdout + r.stderr
    assert not alive(pid) and not os.path.exists(PIDFILE)

    # remove: the programs go, the conffile (as edited) and the data stay
    run(["dpkg", "-r", "sockd"], timeout=300)
    assert installed() == "deinstall ok config-files"
    assert not os.path.exists("/usr/sbin/sockd") and not os.path.exists("/usr/lib/python3/dist-packages/sockd")
    assert "listen 127.0.0.1:%d" % port in open(CONF).read()
    assert os.path.isdir("/var/lib/sockd") and user_exists()

    # purge: nothing of the package is left; the system user stays (debian/postrm)
    run(["dpkg", "-P", "sockd"], timeout=300)
    assert not installed()
    left = [p for p in listed if os.path.lexists(p) and not os.path.isdir(p)]
    assert left == [], left
    gone_dirs = [p for p in listed if "sockd" in p and os.path.isdir(p)]
    assert gone_dirs == [], gone_dirs
    for path in (CONF, "/etc/init.d/sockd", "/var/lib/sockd", "/var/cache/sockd", PIDFILE):
        assert not os.path.lexists(path), path
    assert not [f for d in os.listdir("/etc") if d.startswith("rc") and d.endswith(".d")
                for f in os.listdir(os.path.join("/etc", d)) if f.endswith("sockd")]
    assert named_sockd() == before                        # unit links, rc.d links, state files: gone
    assert user_exists()


def named_sockd():
    """Paths under /etc and systemd's state whose name says sockd."""
    return {os.path.join(d, n) for top in ("/etc", "/var/lib/systemd") for d, dirs, files in os.walk(top)
            for n in dirs + files if "sockd" in n}


def inetd_once():
    """One client through the installed sockd in inetd mode (a socket on
    its standard input), on the package's /etc/sockd.conf."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    c = socket.create_connection(lsock.getsockname(), 5)
    server_side, _ = lsock.accept()
    p = subprocess.Popen(["/usr/sbin/sockd", "--inetd", "-f", CONF], stdin=server_side, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
    server_side.close()
    try:
        c.sendall(b"\x05\x01\x00")                     # SOCKS 5, no authentication
        assert helpers.recv_exact(c, 2) == b"\x05\x00"
        c.close()
        assert p.wait(20) == 0
    finally:
        helpers.kill_pid(p, signal.SIGTERM)
        lsock.close()
