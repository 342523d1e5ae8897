import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gsskit  # noqa: E402
import helpers  # noqa: E402


@pytest.fixture
def start_sockd(tmp_path):
    """start_sockd(conf, **kw) -> helpers.Sockd, stopped after the test."""
    started = []

    def start(conf, **kw):
        name = kw.pop("name", "sockd%d" % len(started))
        s = helpers.Sockd(tmp_path, conf, name=name, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def www(tmp_path):
    d = tmp_path / "www"
    d.mkdir()
    (d / "hello.txt").write_text("hello through sockd\n")
    srv = helpers.HTTPServer(d)
    yield srv
    srv.close()


@pytest.fixture
def echo_server():
    srv = helpers.TCPServer(helpers.echo_handler)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def krb5_realm():
    """A throwaway MIT realm for the whole session (gsskit.Realm: SOCKS.TEST,
    its KDC on a free loopback port), started by the first test that asks
    for it, in well under a second; stopped by PID at the end."""
    realm = gsskit.Realm()
    yield realm
    realm.stop()


@pytest.fixture
def start_danted_gss(tmp_path, krb5_realm):
    """start_danted_gss(**kw) -> gsskit.DantedGss (Dante's GSS-API server on
    the session's realm; kw as DantedGss takes them), stopped after the test."""
    started = []

    def start(**kw):
        name = kw.pop("name", "danted-gss%d" % len(started))
        d = gsskit.DantedGss(krb5_realm, tmp_path, name=name, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def start_tap(tmp_path):
    """start_tap(upstream_port, **kw) -> gsskit.Tap (the recording relay),
    recording under tmp_path/tapN, stopped after the test."""
    started = []

    def start(upstream, **kw):
        t = gsskit.Tap(upstream, tmp_path / ("tap%d" % len(started)), **kw)
        started.append(t)
        return t
    yield start
    for t in started:
        t.stop()


@pytest.fixture
def start_eager_shim(tmp_path):
    """start_eager_shim(upstream_port, **kw) -> gsskit.EagerShim (stock
    curl's crutch, pinned), stopped after the test."""
    started = []

    def start(upstream, **kw):
        s = gsskit.EagerShim(upstream, tmp_path, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture(params=["threads", "fork"])
def model(request):
    return request.param


# --- running beside one another ------------------------------------------------------------
#
# `make test` runs the suite on two pytest-xdist workers (tests/README.md).
# A test marked ``serial`` runs alone: while it runs, from its fixtures'
# set-up to their tear-down, the other worker runs no test.  That is for
# tests that measure time or rates (a neighbour's load would be noise in
# what they measure), that load the machine on purpose (floods, churn), or
# that use a resource of the whole machine that other tests use too.  Whole
# files are listed here; a single test in another file carries
# ``@pytest.mark.serial``.  Serial tests are put last, so that the two
# workers run the rest side by side first.  A test that uses a thing of the
# machine that no other test touches (identd's port 113, the package
# installed with dpkg) has a machine(NAME) mark instead (its file in
# MACHINE_FILES, or on the test): the tests of one name run one at a time,
# but beside the others.

SERIAL_FILES = {
    "tests/test_bench.py": "the bench's rates",
    "tests/integration/test_eyeballs.py": "the stagger between addresses, measured",
    "tests/integration/test_helper_pools.py": "floods, and the time a normal client takes beside them",
    "tests/integration/test_logins.py": "the timing of password checks; back-off penalties in seconds",
}

# Files whose tests use one thing of the whole machine that no other test
# touches: they run one at a time (a lock of that name), but beside the
# ordinary tests, not alone.  A single test elsewhere carries
# ``@pytest.mark.machine(NAME)`` (test_package.py's install: "dpkg"; its
# lintian and contents tests only read the .deb and need no lock).
MACHINE_FILES = {
    "tests/integration/test_identity.py": "identd",  # oidentd on 127.0.0.1:113, a hostile one on 127.0.0.4:113
}

# Tests started before all others: test_package.py's first test builds the
# .deb (8 s of one core, under a lock) for the run; started first, the build
# runs beside the other worker's tests, and by the time the package's two
# other tests come up the .deb is there.  In the middle of the run, the
# worker that drew the second one sat waiting on the build's lock.
FIRST = ("tests/integration/test_package.py::test_lintian_finds_no_error",)

# System users that test fixtures make with useradd when missing and delete
# afterwards (tests/integration/test_identity.py, test_client.py,
# tests/opshelp.py).  With two workers, one worker's fixture would delete a
# user the other's still uses; so the controller makes the missing ones
# before the workers start (the fixtures then find them and leave them) and
# deletes them at the end.
TEST_USERS = ("sockdid", "sockdclient", "sockdops")


def pytest_configure(config):
    config.addinivalue_line("markers", "conf(text): lines a test adds to its fixture's sockd.conf")
    config.addinivalue_line("markers", "slow: tens of seconds (the Debian package); runs in make test and CI, "
                            "-m 'not slow' leaves it out")
    config.addinivalue_line("markers", "serial: runs alone, never beside another test (it measures time or "
                            "rates, loads the machine, or uses a resource of the whole machine)")
    config.addinivalue_line("markers", "machine(name): uses a thing of the whole machine that only tests of "
                            "this mark touch: one such test at a time, beside the others")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    named = list(SERIAL_FILES) + list(MACHINE_FILES) + [t.split("::")[0] for t in FIRST]
    missing = [f for f in named if not os.path.exists(os.path.join(root, f))]
    if missing:
        raise pytest.UsageError("tests/conftest.py: SERIAL_FILES, MACHINE_FILES or FIRST names files that do not "
                                "exist: %s" % missing)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "sockd_turns" in workerinput:
        config.pluginmanager.register(Turns(workerinput["sockd_turns"]), "sockd-turns")


def pytest_collection_modifyitems(config, items):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for item in items:
        rel = os.path.relpath(str(item.path), root)
        if rel in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
        if rel in MACHINE_FILES:
            item.add_marker(pytest.mark.machine(MACHINE_FILES[rel]))
    # stable: order kept, but FIRST before the rest and the serial ones last
    items.sort(key=lambda item: (item.get_closest_marker("serial") is not None, item.nodeid not in FIRST))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller, before each worker starts: the users made, and
    the worker told where the turns' lock files are."""
    config = node.config
    if not hasattr(config, "sockd_turns"):
        config.sockd_turns = tempfile.mkdtemp(prefix="sockd-test-turns-")
        config.sockd_users = make_test_users()
    node.workerinput["sockd_turns"] = config.sockd_turns


def pytest_unconfigure(config):
    if hasattr(config, "sockd_turns"):
        shutil.rmtree(config.sockd_turns, ignore_errors=True)
        for name in config.sockd_users:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def make_test_users():
    """Make the TEST_USERS that are missing; returns those made.  Without
    useradd nothing is made: the fixtures' own need() says so."""
    useradd = shutil.which("useradd") or shutil.which("/usr/sbin/useradd")
    made = []
    for name in TEST_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            if useradd is None:
                continue
            r = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                               capture_output=True, text=True)
            if r.returncode == 0:
                made.append(name)
    return made


class Turns:
    """A worker's side of the rule above: two flock files shared by the
    workers of one run.  A serial test takes the gate, then the room alone;
    any other test passes the gate (so it waits while a serial test waits
    or runs) and shares the room.  A machine(name) test shares the room
    too, and holds the file of its name as well, so that two of one name
    never run at once.  Waits are bounded: nothing holds a lock longer than
    one test."""

    WAIT = 1800          # seconds: far beyond any one test
    POLL = 0.01

    def __init__(self, directory):
        self.directory = directory
        self.gate = open(os.path.join(directory, "gate"), "a")
        self.room = open(os.path.join(directory, "room"), "a")
        self.things = {}

    def thing(self, name):
        """The lock of one machine(name) resource (a file beside the gate)."""
        if name not in self.things:
            self.things[name] = open(os.path.join(self.directory, "machine-" + name), "a")
        return self.things[name]

    def take(self, f, how, what):
        end = time.monotonic() + self.WAIT
        while True:
            try:
                fcntl.flock(f, how | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > end:
                    raise RuntimeError("waited %d s for the other worker's test to end (%s)" % (self.WAIT, what))
                time.sleep(self.POLL)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        alone = item.get_closest_marker("serial") is not None
        self.take(self.gate, fcntl.LOCK_EX, item.nodeid)
        try:
            self.take(self.room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH, item.nodeid)
        except BaseException:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
            raise
        if not alone:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        mark = item.get_closest_marker("machine")
        thing = self.thing(mark.args[0]) if mark is not None else None
        try:
            if thing is not None:
                self.take(thing, fcntl.LOCK_EX, item.nodeid)
            yield
        finally:
            if thing is not None:
                fcntl.flock(thing, fcntl.LOCK_UN)
            fcntl.flock(self.room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(self.gate, fcntl.LOCK_UN)
