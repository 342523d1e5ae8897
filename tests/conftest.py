import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


@pytest.fixture(params=["threads", "fork"])
def model(request):
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "conf(text): lines a test adds to its fixture's sockd.conf")
