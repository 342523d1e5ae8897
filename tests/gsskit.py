"""The GSS-API (RFC 1961) test bed as a small API for tests.

It owns: a throwaway MIT Kerberos realm (``Realm``: KDC, service keytab, users
and their ticket caches, expired and empty caches), the reference builds
(``dante_gss()``, ``curl_gss()``: prefixes made once per machine by
tests/gssapi/build-cached.sh), the reference server (``DantedGss``), the
reference clients (``socksify``, ``curl_fixed``, and stock curl behind the
eager shim, ``EagerShim``/``stock_curl``), and the recording relay (``Tap``)
with a decoder for what it recorded (``decode_session``, pure).

The contract, as for every test here: loopback only, free ports, every
process started by its own PID and stopped by it, every wait bounded.  The
krb5 settings reach only the processes started (``Realm.env``), never this
process's own environment, and never /etc/krb5.conf.  A part that cannot be
had skips the test, or fails it under CI=true.  The recipe all of this
follows is shared/docs/gssapi-testbed.md; tests/gssapi/README.md says how to
run things by hand.
"""

import dataclasses
import importlib.util
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import helpers

HERE = os.path.dirname(os.path.abspath(__file__))
GSSDIR = os.path.join(HERE, "gssapi")
BUILD_CACHED = os.path.join(GSSDIR, "build-cached.sh")

REALM = "SOCKS.TEST"
SERVICES = ("rcmd/localhost", "rcmd/127.0.0.1", "socks/localhost", "socks/127.0.0.1")
USERS = {"alice": "alicepw", "bob": "bobpw"}
LEVELS = ("clear", "integrity", "confidentiality")   # index = RFC 1961 level (0 is Dante's "clear")
# Where no client keytab is: with one, MIT silently gets a fresh TGT and a
# "no ticket" test passes for the wrong reason (recipe, gotcha 6).
NO_CLIENT_KEYTAB = "FILE:/nonexistent"
ENCTYPES = "aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96"


def unavailable(msg):
    """Skip the test for a missing part of the bed; under CI=true, fail it."""
    if helpers.IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def level_name(level):
    """'clear', 'integrity' or 'confidentiality' for 0, 1, 2 (or the name itself)."""
    if isinstance(level, int):
        return LEVELS[level]
    if level not in LEVELS:
        raise ValueError("no such protection level: %r" % (level,))
    return level


def ccache_name(ccache):
    """A KRB5CCNAME value: a path becomes FILE:path, a TYPE:residual stays."""
    s = os.fspath(ccache)
    return s if re.match(r"^[A-Z]+:", s) else "FILE:" + os.path.abspath(s)


# --- ports and listeners ----------------------------------------------------------

def free_dual_port(host="127.0.0.1", tries=50):
    """A port free on ``host`` for both TCP and UDP now (the KDC wants both)."""
    for _ in range(tries):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            u.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise AssertionError("no port free for both TCP and UDP on %s" % host)


def _proc_net_ports(table, want_state):
    ports = set()
    with open("/proc/net/" + table) as f:
        next(f)
        for line in f:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if want_state is None or fields[3] == want_state:
                ports.add(port)
    return ports


def tcp_listening(port):
    """Whether something listens on TCP ``port`` (IPv4), as /proc says:
    asking by connecting would be a client session in the server's log."""
    return port in _proc_net_ports("tcp", "0A")


def udp_bound(port):
    return port in _proc_net_ports("udp", None)


def _start(cmd, log_path, env, listening, what, timeout=10):
    """Popen ``cmd`` (own session, output to ``log_path``) and wait until
    ``listening()``.  Returns the Popen, or None when the process exited first
    (a port taken meanwhile: the caller tries another)."""
    logf = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    finally:
        logf.close()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return None
        if listening():
            return proc
        time.sleep(0.01)
    helpers.kill_pid(proc)
    with open(log_path, "rb") as f:
        raise AssertionError("%s did not start in %ss:\n%s" % (what, timeout, f.read().decode("utf-8", "replace")))


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


# --- the realm ------------------------------------------------------------------

KRB5_CONF = """\
[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    permitted_enctypes = {enctypes}
[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
    }}
[domain_realm]
    localhost = {realm}
"""

KDC_CONF = """\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}
[realms]
    {realm} = {{
        database_name = {dir}/principal
        key_stash_file = {dir}/stash
        acl_file = {dir}/kadm5.acl
        kdc_listen = 127.0.0.1:{port}
        kdc_tcp_listen = 127.0.0.1:{port}
        master_key_type = aes256-cts-hmac-sha1-96
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
        max_life = 8h
    }}
[logging]
    kdc = FILE:{dir}/kdc.log
    default = FILE:{dir}/krb5lib.log
"""


class Realm:
    """A throwaway MIT realm (``SOCKS.TEST``) in a fresh directory, its KDC on
    one free loopback port for UDP and TCP, started by PID.

    The directory is under /tmp with mode 0755, not under pytest's 0700
    tmp dirs: danted runs as nobody when it re-reads krb5.conf after an
    accept (recipe, gotcha 1).  It holds krb5.conf (0644), kdc.conf, the
    database, ``keytab`` (the service keytab: ``SERVICES``, 0600) and the
    users' ticket caches.  ``stop()`` ends the KDC and removes it all."""

    def __init__(self, realm=REALM):
        self.realm = realm
        self.proc = None
        self.tools = {p: helpers.need(p) for p in ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist")}
        self.dir = tempfile.mkdtemp(prefix="sockd-krb5-")
        os.chmod(self.dir, 0o755)
        self.krb5_conf = os.path.join(self.dir, "krb5.conf")
        self.kdc_conf = os.path.join(self.dir, "kdc.conf")
        self.keytab = os.path.join(self.dir, "service.keytab")
        self.kdc_log = os.path.join(self.dir, "kdc.log")
        self._tickets = {}
        self._expired = {}
        try:
            self._write_confs(free_dual_port())
            with open(os.path.join(self.dir, "kadm5.acl"), "w") as f:
                f.write("*/admin@%s *\n" % realm)
            self._run([self.tools["kdb5_util"], "create", "-s", "-r", realm, "-P", "throwaway-master"])
            cmds = ["addprinc -randkey %s" % s for s in SERVICES]
            cmds.append("ktadd -k %s %s" % (self.keytab, " ".join(SERVICES)))
            cmds += ["addprinc -pw %s %s" % (pw, user) for user, pw in USERS.items()]
            self.kadmin(*cmds)
            self._start_kdc()
        except BaseException:
            self.stop()
            raise

    def principal(self, name):
        """``name`` with the realm, unless it has one."""
        return name if "@" in name else "%s@%s" % (name, self.realm)

    # -- setup

    def _write_confs(self, port):
        self.kdc_port = port
        fill = dict(realm=self.realm, port=port, dir=self.dir, enctypes=ENCTYPES)
        for path, text in ((self.krb5_conf, KRB5_CONF), (self.kdc_conf, KDC_CONF)):
            with open(path, "w") as f:
                f.write(text.format(**fill))
            os.chmod(path, 0o644)

    def _run(self, cmd, stdin=None, timeout=30, env=None):
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                           env=env or self.env())
        if r.returncode != 0:
            raise AssertionError("%s failed (%s):\n%s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r

    def kadmin(self, *commands):
        """Run kadmin.local commands (one process, commands on stdin).  It
        exits 0 even when a command fails, so its output is checked."""
        r = self._run([self.tools["kadmin.local"]], stdin="\n".join(commands) + "\n")
        bad = [ln for ln in (r.stdout + r.stderr).splitlines()
               if re.search(r"\b(while|error|failed|not found|unknown)\b", ln, re.I)]
        if bad:
            raise AssertionError("kadmin.local: %s\n%s" % ("\n".join(bad), r.stdout + r.stderr))
        return r.stdout

    def addprinc(self, name, password=None):
        """A new principal: a user with ``password``, else random keys."""
        self.kadmin("addprinc -pw %s %s" % (password, name) if password else "addprinc -randkey %s" % name)

    def extract_keytab(self, path, principals):
        """Write ``principals``' keys to the keytab ``path`` (0600), keeping
        their keys (-norandkey: a user's password stays good)."""
        self.kadmin("ktadd -norandkey -k %s %s" % (path, " ".join(principals)))
        return os.fspath(path)

    def _start_kdc(self):
        for _ in range(5):
            port = self.kdc_port
            self.proc = _start([self.tools["krb5kdc"], "-n", "-P", os.path.join(self.dir, "kdc.pid")],
                               os.path.join(self.dir, "krb5kdc.out"), self.env(),
                               lambda: tcp_listening(port) and udp_bound(port), "krb5kdc")
            if self.proc is not None:
                return
            # the port was taken between the probe and the KDC's bind
            self._write_confs(free_dual_port())
        raise AssertionError("krb5kdc would not start:\n" + _read(self.kdc_log))

    # -- for the processes a test starts

    def env(self, ccache=None, base=None):
        """The environment for a child process: ``base`` (default: this
        process's environment) with this realm's KRB5_* variables.  The ticket
        cache is ``ccache`` (a path or TYPE:residual); without one, a cache
        that does not exist, so that no default /tmp/krb5cc_* is ever used."""
        e = dict(os.environ if base is None else base)
        e.update({
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5_KDC_PROFILE": self.kdc_conf,
            "KRB5CCNAME": ccache_name(ccache if ccache is not None else self.missing_ccache()),
            "KRB5_KTNAME": "FILE:" + self.keytab,
            "KRB5RCACHEDIR": self.dir,
            "KRB5_CLIENT_KTNAME": NO_CLIENT_KEYTAB,
        })
        return e

    def kinit(self, user, password=None, ccache=None, lifetime=None):
        """Get ``user``'s TGT into ``ccache`` (default: the realm dir's
        ccache-USER) with ``password`` (default: the user's from USERS), for
        ``lifetime`` (kinit -l syntax, e.g. "1s", "10m").  Returns the
        cache's path."""
        path = os.fspath(ccache) if ccache is not None else os.path.join(self.dir, "ccache-" + user)
        if password is None:
            password = USERS[user]
        cmd = [self.tools["kinit"]] + (["-l", str(lifetime)] if lifetime else []) + [self.principal(user)]
        self._run(cmd, stdin=password + "\n", timeout=15, env=self.env(ccache=path))
        return path

    def ticket(self, user="alice"):
        """A valid ticket cache for ``user``, got once per realm."""
        if user not in self._tickets:
            self._tickets[user] = self.kinit(user, ccache=os.path.join(self.dir, "ccache-" + user))
        return self._tickets[user]

    def has_valid_ticket(self, ccache):
        """Whether ``ccache`` holds a ticket that has not expired (klist -s)."""
        r = subprocess.run([self.tools["klist"], "-s"], env=self.env(ccache=ccache), timeout=15)
        return r.returncode == 0

    def expired_ccache(self, path, user="alice"):
        """A ticket cache at ``path`` with ``user``'s TGT, already expired.
        Made once per realm (about 2 s: MIT grants a 1-second lifetime, and
        the wait is bounded), then copied: an expired ticket stays expired.
        The client library itself then refuses the TGT ("Ticket expired"),
        whatever clock skew the KDC or an acceptor would allow.  But klist -s
        calls a ticket expired in its last second (now >= end) while the
        library still uses it (expired only when now > end, in whole
        seconds): hence the second more."""
        if user not in self._expired:
            made = os.path.join(self.dir, "expired-ccache-" + user)
            self.kinit(user, ccache=made, lifetime="1s")
            helpers.wait_for(lambda: not self.has_valid_ticket(made), 5, 0.05, "the ticket to expire")
            time.sleep(1.05)
            self._expired[user] = made
        shutil.copyfile(self._expired[user], path)
        os.chmod(path, 0o600)
        return os.fspath(path)

    def empty_ccache(self, path, user="alice"):
        """A FILE ticket cache at ``path`` naming ``user`` as its principal
        but holding no ticket (what is left after every ticket is gone)."""
        with open(path, "wb") as f:
            f.write(empty_ccache_bytes(self.principal(user)))
        os.chmod(path, 0o600)
        return os.fspath(path)

    def missing_ccache(self):
        """A ticket cache path where no cache is, nor will be."""
        return os.path.join(self.dir, "no-such-ccache")

    def stop(self):
        """Stop the KDC by its PID and remove the realm's directory."""
        if self.proc is not None:
            helpers.kill_pid(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def empty_ccache_bytes(principal):
    """A version-4 FILE credential cache with this default principal and no
    credentials (the layout of MIT's cc_file.c: version, header, principal)."""
    name, realm = principal.rsplit("@", 1)
    comps = name.split("/")

    def counted(b):
        return struct.pack("!I", len(b)) + b
    princ = struct.pack("!II", 1, len(comps)) + counted(realm.encode()) + b"".join(counted(c.encode()) for c in comps)
    return struct.pack("!HH", 0x0504, 0) + princ


# --- the reference builds ---------------------------------------------------------

_BUILT = {}


def built(name, timeout=1800):
    """The prefix of the cached GSS-API build ``name`` ("dante" or "curl"),
    building it if this machine has none (build-cached.sh waits for another
    build of it that is running).  The outcome, failure too, is kept for the
    session, so a failed build costs its time once."""
    if name not in _BUILT:
        try:
            r = subprocess.run(["bash", BUILD_CACHED, name], capture_output=True, text=True, timeout=timeout)
            _BUILT[name] = (r.returncode == 0 and r.stdout.strip(), r.stderr)
        except subprocess.TimeoutExpired:
            _BUILT[name] = ("", "build-cached.sh %s took more than %ss" % (name, timeout))
    prefix, err = _BUILT[name]
    if not prefix:
        unavailable("cannot build %s with GSS-API (make test-deps builds it):\n%s" % (name, err[-3000:]))
    return prefix


def dante_gss():
    """The prefix of Dante with GSS-API: sbin/danted-gss, bin/socksify."""
    return built("dante")


def curl_gss():
    """The prefix of curl with the SOCKS5 GSS-API fix: bin/curl."""
    return built("curl")


def need_python_gssapi():
    """Skip (fail under CI) when Python's gssapi package is not installed
    (make test-deps installs sockd[gssapi]).  A spec with no origin is a
    namespace package, such as tests/gssapi itself on sys.path: not it."""
    spec = importlib.util.find_spec("gssapi")
    if spec is None or spec.origin in (None, "namespace"):
        unavailable("Python's gssapi package is not installed (make test-deps installs it)")


# --- the reference server ---------------------------------------------------------

DANTED_CONF = """\
logoutput: stderr
{debug}internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: gssapi
user.privileged: root
user.unprivileged: nobody
# gssapi.* here: GSS-API is negotiated before any socks-rule is looked at
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
{gss}{compat}    log: error connect disconnect
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: connect
{user}{gss}    log: error connect disconnect
}}
{block}"""

BLOCK_REST = """\
socks block {
    from: 0.0.0.0/0 to: 0.0.0.0/0
    log: error connect
}
"""


class DantedGss:
    """Dante's server built with GSS-API (the reference server), started by
    PID on a free loopback port, logging to ``log_path``.

    ``levels``: the protection levels offered (ints or names; Dante refuses
    "clear" unless told, and never does 3).  ``keytab``: default the realm's
    service keytab.  ``servicename``: Dante's gssapi.servicename ("rcmd"
    matches rcmd/<any host>).  ``user``: when given, only that user (Dante's
    ``user:``, the principal's name) may CONNECT, everyone else is blocked.
    ``nec``: accept the NEC variant (unwrapped level octet)."""

    def __init__(self, realm, workdir, levels=(0, 1, 2), keytab=None, servicename="rcmd", user=None,
                 nec=False, debug=False, name="danted-gss"):
        self.realm = realm
        self.exe = os.path.join(dante_gss(), "sbin", "danted-gss")
        self.levels = [level_name(lv) for lv in levels]
        self.conf_path = os.path.join(os.fspath(workdir), name + ".conf")
        self.log_path = os.path.join(os.fspath(workdir), name + ".log")
        self.pid_path = os.path.join(os.fspath(workdir), name + ".pid")
        gss = ("    gssapi.keytab: FILE:%s\n    gssapi.servicename: %s\n    gssapi.enctype: %s\n"
               % (keytab or realm.keytab, servicename, " ".join(self.levels)))
        self.proc = None
        for _ in range(3):
            self.port = helpers.free_port()
            with open(self.conf_path, "w") as f:
                f.write(DANTED_CONF.format(
                    port=self.port, gss=gss, debug="debug: 1\n" if debug else "",
                    compat="    clientcompatibility: necgssapi\n" if nec else "",
                    user="    user: %s\n" % realm.principal(user) if user else "", block=BLOCK_REST if user else ""))
            port = self.port
            self.proc = _start([self.exe, "-N", "1", "-f", self.conf_path, "-p", self.pid_path],
                               self.log_path, realm.env(), lambda: tcp_listening(port), "danted-gss")
            if self.proc is not None:
                return
            if "Address already in use" not in self.log():
                break
        raise AssertionError("danted-gss did not start:\n" + self.log())

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def log(self):
        return _read(self.log_path)

    def wait_log(self, pattern, timeout=10):
        """The first match of ``pattern`` in the log, waiting for it (bounded)."""
        rx = re.compile(pattern)
        return helpers.wait_for(lambda: rx.search(self.log()), timeout, what="danted-gss log line %r" % pattern)

    def connected(self, level, user="alice"):
        """The pattern of Dante's line for a CONNECT by ``user`` at ``level``,
        e.g. ``tcp/connect [: gssapi/integrity%alice@SOCKS.TEST@...``."""
        return r"tcp/connect \[: gssapi/%s%%%s@" % (level_name(level), re.escape(self.realm.principal(user)))

    def stop(self):
        """Stop it by its PID (the mother; its children go with it)."""
        if self.proc is not None:
            helpers.kill_pid(self.proc)


# --- the reference clients --------------------------------------------------------

SOCKS_CONF = """\
logoutput: stderr
{debug}route {{
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {host} port = {port}
    proxyprotocol: socks_v5
    command: connect
    method: gssapi
    gssapi.servicename: {servicename}
    gssapi.enctype: {level}
}}
"""


def socksify(argv, port, env, workdir, level=2, servicename="rcmd", host="127.0.0.1", timeout=30,
             debug=False, text=True, input=None):
    """Run ``argv`` under Dante's GSS-API socksify, through the SOCKS 5
    server at ``host``:``port`` with protection ``level``.  ``env`` is the
    environment (a Realm.env(ccache=...)).  The socks.conf is written to
    ``workdir`` with ``logoutput: stderr``, so the client library's errors are
    in the result's stderr.  Returns the CompletedProcess (``timeout``
    bounds it).  Dante's client asks for rcmd/localhost for 127.0.0.1 (it
    looks the host's name up)."""
    conf = os.path.join(os.fspath(workdir), "socks-%s-%d.conf" % (level_name(level), port))
    with open(conf, "w") as f:
        f.write(SOCKS_CONF.format(host=host, port=port, servicename=servicename, level=level_name(level),
                                  debug="debug: 1\n" if debug else ""))
    e = dict(env, SOCKS_CONF=conf, SOCKS_AUTOADD_LANROUTES="no")
    for var in ("SOCKS_SERVER", "SOCKS4_SERVER", "SOCKS5_SERVER"):   # any of these and socks.conf is ignored
        e.pop(var, None)
    return subprocess.run([os.path.join(dante_gss(), "bin", "socksify")] + list(argv), env=e, input=input,
                          capture_output=True, text=text, timeout=timeout, stdin=None if input is not None
                          else subprocess.DEVNULL)


def _curl_args(port, url, host, nec, service, timeout, extra):
    args = ["-sS", "-v", "--max-time", str(timeout), "--socks5-gssapi"]
    if nec:
        args.append("--socks5-gssapi-nec")
    if service:
        args += ["--socks5-gssapi-service", service]
    return args + ["-x", "socks5://%s:%d" % (host, port)] + list(extra) + [url]


def curl_fixed(url, port, env, nec=False, service=None, host="127.0.0.1", timeout=20, extra=()):
    """Fetch ``url`` with the patched curl through the SOCKS 5 server at
    ``host``:``port`` with GSS-API (always level 0: curl asks for nothing
    else), ``nec`` for the NEC variant.  curl asks for rcmd/<host as typed>
    (rcmd/127.0.0.1 here) unless ``service`` names one.  Returns the
    CompletedProcess (stdout the page, stderr curl's -v trace)."""
    cmd = [os.path.join(curl_gss(), "bin", "curl")] + _curl_args(port, url, host, nec, service, timeout, extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 10,
                          stdin=subprocess.DEVNULL)


def can_pin():
    """Whether this process may use SCHED_FIFO (chrt) and CPU 0 (taskset)."""
    for tool in ("chrt", "taskset"):
        if shutil.which(tool) is None:
            return False
    return 0 in os.sched_getaffinity(0) and subprocess.run(
        ["chrt", "-f", "5", "true"], capture_output=True, timeout=10).returncode == 0


class EagerShim:
    """tests/gssapi/eager_shim.py, started by PID in front of the SOCKS 5
    server at 127.0.0.1:``upstream``: it answers 05 01 before reading the
    greeting, so that stock curl, whose bug forgets that it offered GSS-API
    when the reply comes late, goes on to establish a context (recipe,
    section 6).  Pinned to CPU 0 with a real-time priority (SCHED_FIFO 5),
    as the recipe measured; for ``max_conns`` connections or ``lifetime``
    seconds at most.  Use a short lifetime: the priority is real-time."""

    def __init__(self, upstream, workdir, max_conns=10, lifetime=60, python=helpers.PYTHON):
        self.pinned = can_pin()
        self.log_path = os.path.join(os.fspath(workdir), "eager-shim.log")
        prefix = ["chrt", "-f", "5", "taskset", "-c", "0"] if self.pinned else []
        self.proc = None
        for _ in range(3):
            self.port = helpers.free_port()
            port = self.port
            self.proc = _start(prefix + [python, os.path.join(GSSDIR, "eager_shim.py"), str(port), str(upstream),
                                         str(max_conns), str(lifetime)],
                               self.log_path, None, lambda: tcp_listening(port), "eager_shim.py")
            if self.proc is not None:
                return
        raise AssertionError("eager_shim.py did not start:\n" + _read(self.log_path))

    def stop(self):
        if self.proc is not None:
            helpers.kill_pid(self.proc)


def stock_curl(url, port, env, service=None, timeout=10, pinned=None):
    """Stock curl (Debian's /usr/bin/curl) with --socks5-gssapi through
    127.0.0.1:``port`` (an EagerShim), on CPU 0 when ``pinned`` (default:
    when the shim could be pinned too).  It cannot complete a request (rc 97
    at best, after a context and the level-0 message): judge the outcome on
    the server's side."""
    curl = helpers.need("curl")
    prefix = ["taskset", "-c", "0"] if (can_pin() if pinned is None else pinned) else []
    return subprocess.run(prefix + [curl] + _curl_args(port, url, "127.0.0.1", False, service, timeout, ()),
                          env=env, capture_output=True, text=True, timeout=timeout + 10, stdin=subprocess.DEVNULL)


# --- the recording relay and what it recorded -------------------------------------

class Tap:
    """tests/gssapi/tap.py, started by PID: a relay from its own free port to
    127.0.0.1:``upstream`` that records each session's two byte streams in
    ``outdir`` (sN.c2s, sN.s2c; sN.done once both ended)."""

    def __init__(self, upstream, outdir, max_sessions=20, lifetime=120, python=helpers.PYTHON):
        self.outdir = os.fspath(outdir)
        os.makedirs(self.outdir, exist_ok=True)
        self.log_path = os.path.join(self.outdir, "tap.log")
        self.proc = None
        for _ in range(3):
            self.port = helpers.free_port()
            port = self.port
            self.proc = _start([python, os.path.join(GSSDIR, "tap.py"), str(port), str(upstream), self.outdir,
                                str(max_sessions), str(lifetime)],
                               self.log_path, None, lambda: tcp_listening(port), "tap.py")
            if self.proc is not None:
                return
        raise AssertionError("tap.py did not start:\n" + _read(self.log_path))

    def sessions(self):
        """The numbers of the sessions recorded so far, in order."""
        return sorted(int(m.group(1)) for m in map(re.compile(r"^s(\d+)\.c2s$").match, os.listdir(self.outdir))
                      if m)

    def session(self, n=1, timeout=10):
        """Session ``n`` decoded, once it has ended (bounded wait)."""
        done = os.path.join(self.outdir, "s%d.done" % n)
        helpers.wait_for(lambda: os.path.exists(done), timeout, what="tap session %d to end" % n)
        with open(os.path.join(self.outdir, "s%d.c2s" % n), "rb") as c, \
                open(os.path.join(self.outdir, "s%d.s2c" % n), "rb") as s:
            return decode_session(c.read(), s.read())

    def stop(self):
        if self.proc is not None:
            helpers.kill_pid(self.proc)


MTYP_NAMES = {1: "auth/context token", 2: "protection-level", 3: "encapsulated data", 0xff: "abort"}


@dataclasses.dataclass(frozen=True)
class Frame:
    """One RFC 1961 frame: ver 1, ``mtyp`` (1 context, 2 protection level,
    3 encapsulated data, 0xff abort), its token (empty for an abort)."""
    mtyp: int
    token: bytes


@dataclasses.dataclass(frozen=True)
class Stream:
    """One direction of a recorded session: ``head`` (the client's method
    greeting, or the server's method reply), the RFC 1961 frames that follow,
    and ``tail``: the bytes after the last whole frame (at level 0, the SOCKS
    request or reply and the relayed data, unframed)."""
    head: bytes
    frames: tuple
    tail: bytes

    def tokens(self, mtyp):
        return [f.token for f in self.frames if f.mtyp == mtyp]


@dataclasses.dataclass(frozen=True)
class Session:
    c2s: Stream
    s2c: Stream

    def plaintext(self, needles):
        """Where any of ``needles`` (bytes) shows in clear: a list of
        (direction, place) with place "frame N (mtyp M)" or "tail"."""
        found = []
        for direction, stream in (("c2s", self.c2s), ("s2c", self.s2c)):
            for i, f in enumerate(stream.frames):
                if any(n in f.token for n in needles):
                    found.append((direction, "frame %d (mtyp %d)" % (i, f.mtyp)))
            if any(n in stream.tail for n in needles):
                found.append((direction, "tail"))
        return found


def decode_frames(data, pos=0):
    """The RFC 1961 frames in ``data`` from ``pos`` on, while they last:
    (frames, the position after the last whole one).  A frame is 01 MTYP
    LEN(2, big-endian) TOKEN, or the 2-byte abort 01 ff.  Pure."""
    frames = []
    while pos + 2 <= len(data) and data[pos] == 1 and data[pos + 1] in MTYP_NAMES:
        mtyp = data[pos + 1]
        if mtyp == 0xff:
            frames.append(Frame(mtyp, b""))
            pos += 2
            continue
        if pos + 4 > len(data):
            break
        n = int.from_bytes(data[pos + 2:pos + 4], "big")
        if pos + 4 + n > len(data):
            break
        frames.append(Frame(mtyp, bytes(data[pos + 4:pos + 4 + n])))
        pos += 4 + n
    return tuple(frames), pos


def decode_stream(data, from_client):
    """One direction of a SOCKS 5 + RFC 1961 session.  Pure."""
    head_len = min(len(data), 2 + data[1]) if from_client and len(data) >= 2 else min(len(data), 2)
    frames, pos = decode_frames(data, head_len)
    return Stream(bytes(data[:head_len]), frames, bytes(data[pos:]))


def decode_session(c2s, s2c):
    """A recorded session (the client's bytes, the server's bytes).  Pure."""
    return Session(decode_stream(c2s, True), decode_stream(s2c, False))


def describe(session, needles=(b"GET /", b"hello")):
    """The session as decode1961.py prints it: one line per frame, with
    "[plaintext visible]" where a needle shows.  Pure."""
    out = []
    for name, stream, head in (("client->server", session.c2s, "greeting"),
                               ("server->client", session.s2c, "method reply")):
        total = len(stream.head) + sum(4 + len(f.token) if f.mtyp != 0xff else 2 for f in stream.frames) \
            + len(stream.tail)
        out.append("--- %s: %d bytes" % (name, total))
        out.append("  %s: %s" % (head, stream.head.hex(" ")))
        for f in stream.frames:
            seen = "  [plaintext visible]" if any(n in f.token for n in needles) else ""
            out.append("  frame ver=1 mtyp=%d (%s) len=%d head=%s%s"
                       % (f.mtyp, MTYP_NAMES[f.mtyp], len(f.token), f.token[:8].hex(" "), seen))
        if stream.tail:
            seen = " [plaintext visible]" if any(n in stream.tail for n in needles) else ""
            out.append("  unframed tail (%d bytes): %s ...%s" % (len(stream.tail), stream.tail[:24].hex(" "), seen))
    return "\n".join(out)
