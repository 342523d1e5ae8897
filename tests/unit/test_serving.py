"""serving.py: what the base does with each signal and with the master's
going, in a worker and in a one-client process, without forking: the
objects are built as after a fork, with a stand-in for their signal pipe."""

import os
import signal

import pytest

from sockd import channel as CH
from sockd import config as C
from sockd import serving as S
from sockd.listeners import open_listener
from sockd.log import log
from sockd.loop import Loop
from sockd.session import Context

CONF = "listen 127.0.0.1:0\ntimeout shutdown 7\npermit 127.0.0.0 255.0.0.0\n"


class Recorded:
    """A signal pipe the test fills."""

    def __init__(self):
        self.r, self.w = os.pipe()
        self.pending = []

    def read(self):
        out, self.pending = self.pending, []
        return out


class Live:
    """A session stand-in: close() takes it out of the context."""

    def __init__(self, ctx):
        self.ctx = ctx
        ctx.sessions.add(self)
        self.closed = False

    def close(self):
        self.closed = True
        self.ctx.sessions.discard(self)

    def status(self):
        return "Connect from fred@127.0.0.1"


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(log, "log", lambda level, message: lines.append(message))
    monkeypatch.setattr(S, "setproctitle", lambda title: None)
    return lines


def signal_it(proc, sig):
    proc.signals.pending.append(sig)
    proc.on_signal(0)


@pytest.fixture
def worker(logged):
    cfg = C.parse_text(CONF)
    lsock = open_listener("127.0.0.1", 0)
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()
    w = S.Worker(1, 1, cfg, [lsock], None, status_fd=status_w, alive_fd=alive_r)
    w.loop = Loop()
    w.signals = Recorded()
    w.watch()
    w.ctx = Context(cfg, w.loop, log)
    w.ctx.on_close = w.on_session_closed
    w.start_accepting()
    w.set_title()
    yield w, status_r, alive_w
    w.loop.close()
    lsock.close()
    for fd in (status_r, status_w, alive_r, w.signals.r, w.signals.w):
        os.close(fd)
    try:
        os.close(alive_w)
    except OSError:
        pass


def test_worker_sighup_retires_and_tells_the_master(worker):
    w, status_r, _ = worker
    Live(w.ctx)
    signal_it(w, signal.SIGHUP)
    assert w.retiring and not w.accepting and w.listeners == []
    # retitled with its one client, which the master hears of too, then "R"
    assert os.read(status_r, 100) == b"C %d 1\nR %d\n" % (os.getpid(), os.getpid())
    assert w.ctx.sessions and w.title_at > 0            # still serving its client


def test_worker_sigterm_with_clients_waits_for_timeout_shutdown(worker, logged):
    w, _, _ = worker
    live = Live(w.ctx)
    signal_it(w, signal.SIGTERM)
    assert w.stopping and w.listeners == [] and w.deadline_timer is not None
    w.shutdown_deadline()
    assert live.closed
    assert "worker 1: closing 1 connection still open after 7s (timeout shutdown)" in logged


def test_worker_sigusr1_reports(worker, logged):
    w, _, _ = worker
    signal_it(w, signal.SIGUSR1)
    assert logged[-1].startswith("worker 1 (pid %d, generation 1): 0 clients; since start 0s ago: accepted 0"
                                 % os.getpid())


def test_worker_notices_that_the_master_has_gone(worker, logged):
    w, _, alive_w = worker
    os.close(alive_w)
    w.loop.run(until=lambda: w.stopping)
    assert "worker 1: the master has gone; stopping" in logged


def test_worker_rechecks_against_what_the_master_published(worker, logged, monkeypatch):
    w, _, _ = worker
    ch = w.channel = CH.Channel()
    try:
        new = C.parse_text(CONF.replace("permit", "reload recheck yes\ndeny 0/0\npermit"))
        ch.publish(2, new, True)
        checked = []
        monkeypatch.setattr(S.recheck, "recheck", lambda sessions, cfg, log: checked.append(cfg))
        signal_it(w, signal.SIGHUP)
        assert w.seen == 2 and w.ctx.config.reload_recheck and len(checked) == 1
        assert w.generation == 1                     # it was started for the first
    finally:
        ch.close()


def test_one_client_sigint_closes_its_client_and_sigusr1_shows_it(logged):
    cfg = C.parse_text(CONF)
    c = S.OneClient(cfg, None, generation=3)
    c.loop = Loop()
    try:
        c.signals = Recorded()
        c.ctx = Context(cfg, c.loop, log, bufsize=4096)
        c.session = live = Live(c.ctx)
        signal_it(c, signal.SIGUSR1)
        assert logged[-1] == "child (pid %d, generation 3): Connect from fred@127.0.0.1" % os.getpid()
        signal_it(c, signal.SIGTERM)
        assert c.stopping and not live.closed and c.deadline_timer is not None
        signal_it(c, signal.SIGINT)
        assert live.closed
    finally:
        c.loop.close()
        os.close(c.signals.r)
        os.close(c.signals.w)
