"""models.py: the process models against a small fake master (the host
interface they use) and the fake OS of tests/fakeos.py."""

import signal

import pytest

from fakeos import FakeOS
from sockd import config as C
from sockd import models as MD
from sockd.errors import Halt
from sockd.limits import Limits

PERMIT = "permit 127.0.0.0 255.0.0.0\n"


class Host:
    """What a model asks of the master."""

    def __init__(self):
        self.os = FakeOS()
        self.procs, self.live, self.held = {}, {"worker": 0, "child": 0, "probe": 0}, {}
        self.counts = {"workers started": 0, "workers died": 0, "clients": 0, "reloads": 0, "failed reloads": 0}
        self.stopping = None
        self.failed, self.halted = [], []
        self.ident_mode = self.channel = None
        self.alive_r = self.status_w = -1

    def add(self, pid, proc, held=None):
        self.procs[pid] = proc
        self.live[proc.kind] += 1
        if held is not None:
            self.held[pid] = held

    def end(self, pid, code):
        proc = self.procs.pop(pid)
        self.live[proc.kind] -= 1
        proc.model.exited(pid, proc, code)

    def count(self, kind, generation=None):
        return sum(1 for p in self.procs.values() if p.kind == kind and generation in (None, p.generation))

    def generation_failed(self, model, why):
        self.failed.append((model, why))

    def halt(self, why):
        self.halted.append(why)


def model(conf, cls=None, generation=1, limits=None, host=None):
    cfg = C.parse_text("listen 127.0.0.1:0\n" + conf + PERMIT)
    host = host or Host()
    listeners = {("127.0.0.1", 0, 0): host.os.open_listener("127.0.0.1", 0)}
    return (cls or MD.MODELS[cfg.model])(host, generation, cfg, None, listeners, limits), host


def test_the_configuration_names_the_model():
    assert MD.MODELS == {"threads": MD.ThreadsModel, "fork": MD.ForkModel}
    assert isinstance(model("")[0], MD.ThreadsModel) and isinstance(model("model fork\n")[0], MD.ForkModel)


def test_limits_only_when_some_limit_is_set_and_shared_across_generations():
    assert MD.make_limits(C.parse_text("limit binds 0\n" + PERMIT)) is None
    # by default the threads model counts pending BINDs only: no client is counted
    only_binds = MD.make_limits(C.parse_text(PERMIT))
    assert only_binds.binds == 16 and not only_binds.clients_on
    assert MD.make_limits(C.parse_text("model fork\n" + PERMIT)) is None     # a child is one client
    cfg = C.parse_text("limit clients 10\nlimit per-address 3\n" + PERMIT)
    lim = MD.make_limits(cfg)
    assert (lim.total, lim.per_address) == (10, 3)
    assert MD.make_limits(C.parse_text("limit per-address 5\n" + PERMIT), lim) is lim
    assert lim.per_address == 3                      # until the master applies the new totals
    # the fork model caps its children itself: the Limits do not count the total
    fork = C.parse_text("model fork\nlimit clients 10\nlimit per-address 5\n" + PERMIT)
    MD.apply_limits(lim, fork)
    assert (lim.total, lim.per_address) == (0, 5)
    assert MD.make_limits(C.parse_text("model fork\nlimit clients 10\n" + PERMIT)) is None


def test_threads_model_starts_its_workers_and_is_ready_once_each_said_so():
    m, host = model("workers 3\n")
    m.start()
    assert len(host.os.forked) == 3 and [p.number for p in host.procs.values()] == [1, 2, 3]
    assert all(p.kind == "worker" and p.generation == 1 for p in host.procs.values())
    assert host.counts["workers started"] == 3
    for n in (1, 2):
        m.booted(n)
    assert not m.ready() and m.waiting_for() == "workers of generation 1 to start"
    m.booted(3)
    assert m.ready() and m.accepting() is None


def test_threads_model_replaces_a_dead_worker_and_fails_on_a_boot_error():
    m, host = model("workers 2\n")
    m.start()
    first, second = host.os.forked
    host.os.now += 10
    host.end(first, 1)
    assert len(host.os.forked) == 3 and host.procs[host.os.forked[-1]].number == 1
    host.end(second, 3)
    assert host.failed == [(m, "worker 2 could not start (the reason is logged above)")]


def test_threads_model_of_a_retired_generation_lets_its_workers_go():
    m, host = model("workers 2\n")
    m.start()
    m.retire()
    host.end(host.os.forked[0], 1)
    assert len(host.os.forked) == 2 and host.counts["workers died"] == 0


def test_threads_model_fork_failure_is_a_halt_and_gives_the_column_back():
    lim = Limits(10)
    m, host = model("workers 1\nlimit clients 10\n", limits=lim)
    host.os.fork_error = 11
    free = list(lim.free)
    with pytest.raises(Halt, match="cannot start worker 1: Resource temporarily unavailable"):
        m.start()
    assert lim.free == free


def test_fork_model_accepts_up_to_its_cap():
    m, host = model("model fork\nlimit clients 2\n")
    lsock = m.listeners[("127.0.0.1", 0, 0)]
    assert m.accepting() == {lsock.fd: lsock}
    socks = [lsock.connect(("127.0.0.1", 7000 + i)) for i in range(3)]
    m.process_request(lsock)
    assert [p.number for p in host.procs.values()] == [s.peer for s in socks[:2]]
    assert socks[0].closed and socks[1].closed and not socks[2].closed
    assert m.accepting() is None and host.counts["clients"] == 2


def test_fork_model_counts_the_client_in_the_limits_and_refuses_over_them():
    lim = Limits(0, 1)
    m, host = model("model fork\nlimit per-address 1\n", limits=lim)
    lsock = m.listeners[("127.0.0.1", 0, 0)]
    lsock.connect(("127.0.0.1", 7000))
    lsock.connect(("127.0.0.1", 7001))
    m.process_request(lsock)
    pids = host.os.forked
    assert len(pids) == 2                        # the second is forked to say why it is refused
    assert host.held == {pids[0]: (lim, "slot", host.held[pids[0]][2])}


def test_fork_model_drains_the_backlog_on_sigterm_only():
    m, host = model("model fork\n")
    lsock = m.listeners[("127.0.0.1", 0, 0)]
    for i in range(20):
        lsock.connect(("127.0.0.1", 7000 + i))
    m.stopping(signal.SIGINT)
    assert host.os.forked == []
    m.stopping(signal.SIGTERM)
    assert len(host.os.forked) == 20             # more than the 16 of one readable event


def test_fork_model_a_child_that_cannot_start_halts():
    m, host = model("model fork\n")
    lsock = m.listeners[("127.0.0.1", 0, 0)]
    lsock.connect()
    m.process_request(lsock)
    host.end(host.os.forked[0], 3)
    assert host.halted == ["a child could not start (the reason is logged above); stopping"]


def test_fork_model_reports_its_children():
    m, host = model("model fork\n")
    lsock = m.listeners[("127.0.0.1", 0, 0)]
    lsock.connect()
    m.process_request(lsock)
    assert m.report() == "1 children (limit 512); since start: 1 clients, 0 reloads (0 failed)"
    assert m.reloaded() == ""


def test_exit_text():
    assert MD.exit_text(1) == "status 1" and MD.exit_text(-9) == "signal 9"
