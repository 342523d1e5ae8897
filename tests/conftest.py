import os
import sys

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


def pytest_configure(config):
    config.addinivalue_line("markers", "conf(text): lines a test adds to its fixture's sockd.conf")
    config.addinivalue_line("markers", "slow: tens of seconds (the Debian package); runs in make test and CI, "
                            "-m 'not slow' leaves it out")
