"""master.py, driven with a fake OS layer (tests/fakeos.py): no process is
started, no signal sent; the test plays the workers and children (their
status lines, their ends) and the operator (signals)."""

import pwd
import signal

import pytest

from fakeos import FakeOS, FakeReady
from sockd import configload as CL
from sockd import master as M
from sockd.log import log
from sockd.models import ForkModel, ThreadsModel

PERMIT = "permit 127.0.0.0 255.0.0.0\n"


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(log, "log", lambda level, message: lines.append(message))
    return lines


class Run:
    """A Master on a FakeOS, started, with a file to rewrite for reloads."""

    def __init__(self, tmp_path, conf, **overrides):
        self.path = tmp_path / "sockd.conf"
        self.path.write_text(conf)
        self.os = FakeOS()
        self.ready = FakeReady()
        self.m = M.Master(CL.load(str(self.path)), None, str(self.path), overrides, osys=self.os)
        self.m.open(self.ready)
        self.m.start()

    def step(self, n=1):
        for _ in range(n):
            self.m.step()

    def say(self, *lines):
        for line in lines:
            self.os.say(self.m.status_r, line.encode() + b"\n")

    def boot(self, generation, pids=None):
        """Every worker of ``generation`` says it serves."""
        pids = pids or self.workers(generation)
        for p in pids:
            self.say("B %d %d" % (generation, self.m.procs[p].number))
        self.step()

    def workers(self, generation=None):
        return sorted(p for p, proc in self.m.procs.items()
                      if proc.kind == "worker" and (generation is None or proc.generation == generation))

    def children(self):
        return sorted(p for p, proc in self.m.procs.items() if proc.kind == "child")

    def signal(self, sig):
        self.os.signal(sig)
        self.step()

    def rewrite(self, conf):
        self.path.write_text(conf)


def threads(tmp_path, n=2, extra=""):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers %d\n%s" % (n, extra) + PERMIT)
    r.boot(1)
    assert r.m.phase is M.SERVING
    return r


def test_threads_start_spawns_n_workers_and_says_ok_once_all_serve(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 3\n" + PERMIT)
    assert len(r.os.forked) == 3 and r.workers() == r.os.forked
    assert isinstance(r.m.model, ThreadsModel)
    assert r.os.titles == ["sockd: master -f %s" % r.path]
    r.say("B 1 1", "B 1 2")
    r.step()
    assert r.m.phase is M.STARTING and r.ready.said is None
    r.say("B 1 3")
    r.step()
    assert r.m.phase is M.SERVING and r.ready.said == "ok"
    assert r.m.counts["workers started"] == 3


def test_a_start_that_waits_too_long_goes_on(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    r.say("B 1 1")
    r.step(12)
    assert r.ready.said == "ok"
    assert "still waiting for workers of generation 1 to start after 10s; going on" in logged


def test_a_dead_worker_is_replaced(tmp_path, logged):
    r = threads(tmp_path)
    victim = r.workers()[0]
    r.os.now += 5
    r.os.exit(victim, -9)
    r.step()
    assert victim not in r.m.procs and len(r.workers()) == 2
    assert r.os.forked[-1] in r.m.procs and r.m.procs[r.os.forked[-1]].number == 1
    assert "worker 1 (pid %d) exited with signal 9; starting another" % victim in logged
    assert r.m.counts["workers died"] == 1 and r.m.stopping is None


def test_a_worker_that_cannot_start_stops_the_start(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    first, second = r.workers()
    r.os.exit(first, 3)                      # WORKER_BOOT_ERROR
    r.step()
    assert r.ready.said == "error worker 1 could not start (the reason is logged above)"
    assert "worker 1 could not start (the reason is logged above); stopping" in logged
    assert r.m.stopping == signal.SIGINT and r.os.killed_with(signal.SIGINT) == [second]
    assert r.os.listeners[0].fd == -1        # the listener closes at once
    r.os.exit(second, 0)
    r.step()
    assert r.m.finished() and r.m.exit_status == 1


def test_a_worker_that_cannot_start_later_halts(tmp_path, logged):
    r = threads(tmp_path)
    r.os.now += 30
    r.os.exit(r.workers()[1], 3)
    r.step()
    assert "worker 2 could not start (the reason is logged above); stopping" in logged
    assert r.m.stopping == signal.SIGTERM and r.m.exit_status == 1
    assert len(r.os.forked) == 2             # not replaced


def test_five_quick_deaths_halt(tmp_path, logged):
    r = threads(tmp_path, n=1)
    for i in range(5):
        r.os.exit(r.workers()[0], 1)
        r.step()
    assert "workers keep dying as they start; stopping" in logged
    assert r.m.stopping == signal.SIGTERM and r.m.exit_status == 1
    assert len(r.os.forked) == 5             # the first and four replacements


def test_sighup_reload_retires_the_old_workers_and_says_reloaded_once_they_all_did(tmp_path, logged):
    r = threads(tmp_path)
    old = r.workers()
    r.rewrite("listen 127.0.0.1:0\nworkers 2\n" + PERMIT + "deny 0/0\n")
    r.signal(signal.SIGHUP)
    assert "reloading %s (SIGHUP)" % r.path in logged
    new = r.workers(2)
    assert len(new) == 2 and r.m.phase is M.BOOTING
    assert r.os.killed == [] and r.m.generation == 1           # nothing changed yet
    r.boot(2)
    assert r.m.generation == 2 and r.m.phase is M.RETIRING
    assert sorted(r.os.killed_with(signal.SIGHUP)) == old
    assert not any(line.startswith("reloaded") for line in logged)
    r.say("R %d" % old[0])
    r.step()
    assert not any(line.startswith("reloaded") for line in logged)
    r.say("R %d" % old[1])
    r.step()
    port = r.os.listeners[0].addr[1]
    assert "reloaded %s: 2 rules, listening on 127.0.0.1:%d; 2 workers started, 2 older ones finish their " \
           "clients" % (r.path, port) in logged
    assert r.m.phase is M.SERVING and r.m.counts["reloads"] == 1 and len(r.m.cfg.ruleset.rules) == 2
    # the older workers finish their clients and go: not replaced
    for p in old:
        r.os.exit(p, 0)
    r.step()
    assert r.workers() == new and len(r.os.forked) == 4


def test_a_long_files_index_is_built_before_its_generation_forks(tmp_path, logged):
    """The rules' index (built only when needed: sockd -V never builds it) is
    built by the master before the first or a reloaded generation forks,
    so that the workers inherit it instead of each building their own."""
    long = "".join("deny 10.%d.0.0 255.255.0.0\n" % i for i in range(20))
    seen = []

    class Watching(FakeOS):
        def fork(self):
            seen.append(cfg_of().ruleset._buckets is not None)
            return FakeOS.fork(self)
    cfg_of = lambda: r.m.reload.cfg if r.m.reload is not None else r.m.cfg      # noqa: E731
    path = tmp_path / "sockd.conf"
    path.write_text("listen 127.0.0.1:0\nworkers 2\n" + long + PERMIT)
    r = Run.__new__(Run)
    r.path, r.os, r.ready = path, Watching(), FakeReady()
    r.m = M.Master(CL.load(str(path)), None, str(path), {}, osys=r.os)
    assert r.m.cfg.ruleset._buckets is None                  # read, not yet indexed
    r.m.open(r.ready)
    r.m.start()
    r.boot(1)
    r.rewrite("listen 127.0.0.1:0\nworkers 2\n" + long + "deny 10.99.0.0/16\n" + PERMIT)
    r.signal(signal.SIGHUP)
    assert seen == [True] * 4 and r.m.reload.cfg.ruleset._buckets is not None


def test_reload_with_a_broken_file_keeps_the_old(tmp_path, logged):
    r = threads(tmp_path)
    cfg = r.m.cfg
    r.rewrite("listen 127.0.0.1:0\nbogus directive\n" + PERMIT)
    r.signal(signal.SIGHUP)
    assert any(line.startswith("%s:2: " % r.path) for line in logged)          # the problem itself
    assert "reload failed: 1 problem in %s; still running with the previous configuration" % r.path in logged
    assert r.m.cfg is cfg and r.m.phase is M.SERVING and len(r.os.forked) == 2
    assert r.m.counts["failed reloads"] == 1 and r.os.killed == []


def test_reload_whose_new_worker_cannot_start_keeps_the_old(tmp_path, logged):
    r = threads(tmp_path)
    r.rewrite("listen 127.0.0.1:0\nlisten 127.0.0.2:0\nworkers 2\n" + PERMIT)
    r.signal(signal.SIGHUP)
    added = r.os.listeners[-1]
    new = r.workers(2)
    r.os.exit(new[0], 3)
    r.step()
    assert "reload failed: worker 1 could not start (the reason is logged above); still running with the " \
           "previous configuration" in logged
    assert r.os.killed_with(signal.SIGINT) == [new[1]]
    assert added.fd == -1 and r.os.listeners[0].fd >= 0
    assert r.m.generation == 1 and r.m.phase is M.SERVING and r.m.stopping is None
    r.os.exit(new[1], 0)
    r.step()
    assert len(r.os.forked) == 4             # the new generation's end is not replaced


def test_sigterm_during_a_reload_is_acted_on_at_once(tmp_path, logged):
    r = threads(tmp_path)
    r.rewrite("listen 127.0.0.1:0\nlisten 127.0.0.2:0\nworkers 2\n" + PERMIT)
    r.signal(signal.SIGHUP)
    assert r.m.phase is M.BOOTING
    added = r.os.listeners[-1]
    t0 = r.os.now
    r.signal(signal.SIGTERM)
    assert r.os.now - t0 < 1                 # no wait for the new workers
    assert r.m.stopping == signal.SIGTERM
    assert any(line.startswith("stopping (SIGTERM)") for line in logged)
    assert sorted(r.os.killed_with(signal.SIGTERM)) == r.workers()      # old and new alike
    assert all(l.fd == -1 for l in r.os.listeners) and added.fd == -1   # nothing leaks
    assert r.m.reload is None and not any(line.startswith("reloaded") for line in logged)
    for p in r.workers():
        r.os.exit(p, 0)
    r.step()
    assert r.m.finished() and r.m.exit_status == 0 and len(r.os.forked) == 4


def test_sighup_during_a_reload_waits_for_it(tmp_path, logged):
    r = threads(tmp_path)
    r.signal(signal.SIGHUP)
    r.signal(signal.SIGHUP)
    assert logged.count("reloading %s (SIGHUP)" % r.path) == 1
    r.boot(2)
    r.say(*("R %d" % p for p in r.workers(1)))
    r.step()
    assert logged.count("reloading %s (SIGHUP)" % r.path) == 2 and r.m.phase is M.BOOTING


def test_sigterm_while_starting_tells_the_shell(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    r.signal(signal.SIGTERM)
    assert r.ready.said == "error stopped by SIGTERM while starting"
    assert sorted(r.os.killed_with(signal.SIGTERM)) == r.workers()


def test_the_kill_deadline_after_a_stop(tmp_path, logged):
    r = threads(tmp_path, extra="timeout shutdown 2\n")
    r.signal(signal.SIGTERM)
    assert "stopping (SIGTERM): no new clients; live connections have up to 2s" in logged
    t0 = r.os.now
    while not r.os.killed_with(signal.SIGKILL):
        r.step()
        assert r.os.now - t0 < 10
    assert 7 <= r.os.now - t0 < 7.01         # timeout shutdown + KILL_GRACE, on time
    assert sorted(r.os.killed_with(signal.SIGKILL)) == r.workers()
    assert "2 processes still running 5s after the stop; killing them" in logged


def test_sigusr1_reports_and_passes_it_on(tmp_path, logged):
    r = threads(tmp_path)
    r.signal(signal.SIGUSR1)
    assert any(line.startswith("master (pid 4242, threads model, generation 1, up 0s, %s: 1 rules): 2 workers, "
                               "0 finishing; since start: 2 workers started, 0 died, 0 reloads (0 failed)"
                               % r.path) for line in logged)
    assert sorted(r.os.killed_with(signal.SIGUSR1)) == r.workers()


# --- the fork model -----------------------------------------------------------------------------

def fork(tmp_path, extra=""):
    r = Run(tmp_path, "listen 127.0.0.1:0\nmodel fork\n%s" % extra + PERMIT)
    assert r.m.phase is M.SERVING and r.ready.said == "ok" and r.os.frozen == 1
    assert isinstance(r.m.model, ForkModel)
    assert r.os.rehearsed == 1          # warmed once, before the first child
    return r


def test_fork_model_forks_a_child_per_client(tmp_path, logged):
    r = fork(tmp_path)
    lsock = r.os.listeners[0]
    socks = [lsock.connect(("127.0.0.1", 6000 + i)) for i in range(3)]
    r.step()
    assert len(r.children()) == 3 and all(s.closed for s in socks)   # the parent's copy closed
    assert [r.m.procs[p].number for p in r.children()] == [s.peer for s in socks]
    assert r.m.counts["clients"] == 3


def test_fork_model_child_cap_stops_polling_the_listeners(tmp_path, logged):
    r = fork(tmp_path, "limit clients 2\n")
    lsock = r.os.listeners[0]
    for i in range(3):
        lsock.connect(("127.0.0.1", 6000 + i))
    r.step()
    assert len(r.children()) == 2 and len(lsock.queue) == 1        # the kernel's backlog holds it
    r.step()
    assert lsock.fd not in r.os.poller_made.fds
    r.os.exit(r.children()[0], 0)
    r.step()                                  # reaped
    assert len(r.children()) == 1 and len(lsock.queue) == 1
    r.step()                                  # polled again: the third one
    assert len(r.children()) == 2 and lsock.queue == []


def test_fork_model_sigterm_serves_the_backlog_then_closes(tmp_path, logged):
    r = fork(tmp_path)
    lsock = r.os.listeners[0]
    lsock.connect()
    r.os.signal(signal.SIGTERM)
    r.step()
    assert len(r.children()) == 1 and lsock.fd == -1
    assert r.os.killed_with(signal.SIGTERM) == r.children()


def probed(tmp_path):
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    r = Run(tmp_path, "listen 127.0.0.1:0\nmodel fork\nuser nobody\n" + PERMIT)
    probe = r.os.forked[0]
    assert r.m.procs[probe].kind == "probe" and r.m.phase is M.STARTING
    r.os.listeners[0].connect()
    r.step()
    assert r.os.forked == [probe]            # no client before the probe has passed
    return r, probe


def test_fork_model_probe_must_pass_before_serving(tmp_path, logged):
    r, probe = probed(tmp_path)
    r.os.exit(probe, 0)
    r.step()
    assert r.m.phase is M.SERVING and r.ready.said == "ok"
    r.step()
    assert len(r.children()) == 1


def test_fork_model_probe_that_fails_stops_the_start(tmp_path, logged):
    r, probe = probed(tmp_path)
    r.os.exit(probe, 3)
    r.step()
    assert "children could not start (the reason is logged above); stopping" in logged
    assert r.ready.said == "error children could not start (the reason is logged above)"
    assert r.m.finished() and r.m.exit_status == 1 and r.children() == []


def test_a_reload_may_change_the_model(tmp_path, logged):
    r = threads(tmp_path)
    old = r.workers()
    r.rewrite("listen 127.0.0.1:0\nmodel fork\n" + PERMIT)
    r.signal(signal.SIGHUP)
    # the fork model has nothing to start: committed at once
    assert isinstance(r.m.model, ForkModel) and r.m.generation == 2
    assert sorted(r.os.killed_with(signal.SIGHUP)) == old
    r.say(*("R %d" % p for p in old))
    r.step()
    assert any(line.startswith("reloaded %s: 1 rules, listening on 127.0.0.1:" % r.path) for line in logged)
    r.os.listeners[0].connect()
    r.step()
    assert len(r.children()) == 1 and r.m.procs[r.children()[0]].generation == 2
    for p in old:                             # the old workers finish and are not replaced
        r.os.exit(p, 0)
    r.step()
    assert r.workers() == [] and r.m.stopping is None


# --- issue 16: the metrics endpoint and the totals of what the processes report

def metric(r, name):
    for line in r.m.metrics_text().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


CONNECTED = 'sockd_sessions_total{command="connect",outcome="connected"}'


def test_metrics_totals_keep_what_a_killed_worker_reported(tmp_path, logged):
    r = threads(tmp_path, extra="metrics 127.0.0.1:0\n")
    assert any(line.startswith("metrics: serving http://127.0.0.1:") for line in logged)
    a, b = r.workers()
    r.say("M %d c=3 s|connect|connected=2" % a, "M %d c=1 s|connect|connected=1" % b)
    r.step()
    assert metric(r, "sockd_connections_accepted_total") == 4 and metric(r, CONNECTED) == 3
    r.say("M %d c=5 s|connect|connected=4" % a)          # absolute values: the newer one replaces
    r.step()
    assert metric(r, CONNECTED) == 5
    r.os.exit(a, -9)
    r.step()
    assert a not in r.m.procs and metric(r, CONNECTED) == 5 and metric(r, "sockd_workers_died_total") == 1
    c = [p for p in r.workers() if p != b][0]            # its replacement starts from nothing
    r.say("M %d c=1 s|connect|connected=1" % c)
    r.step()
    assert metric(r, CONNECTED) == 6 and metric(r, "sockd_connections_accepted_total") == 7


def test_metrics_a_last_report_written_just_before_the_end_counts(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nmetrics 127.0.0.1:0\n" + PERMIT, model="fork")
    r.step()
    lsock = r.os.listeners[0]
    lsock.connect()
    r.step()
    child = r.children()[0]
    r.os.exit(child, 0)
    # the child wrote its report, then ended, after the master's first read of the pass
    real_reap = r.os.reap

    def reap():
        r.say("M %d c=1 s|connect|connected=1 b|out=100" % child)
        r.os.reap = real_reap
        return real_reap()
    r.os.reap = reap
    r.step()
    assert child not in r.m.procs
    assert metric(r, CONNECTED) == 1 and metric(r, 'sockd_bytes_total{direction="out"}') == 100
    assert metric(r, "sockd_children_started_total") == 1
    # a report of a process the master never had (or has long forgotten) is not counted
    r.say("M 31337 c=50")
    r.step()
    assert metric(r, "sockd_connections_accepted_total") == 1


def test_metrics_a_status_line_split_between_two_reads(tmp_path, logged):
    r = threads(tmp_path, extra="metrics 127.0.0.1:0\n")
    a = r.workers()[0]
    r.os.say(r.m.status_r, b"M %d c=2 s|connect|con" % a)
    r.step()
    assert metric(r, CONNECTED) == 0
    r.os.say(r.m.status_r, b"nected=2\n")
    r.step()
    assert metric(r, CONNECTED) == 2


def test_metrics_survive_a_reload_which_keeps_or_moves_the_endpoint(tmp_path, logged):
    r = threads(tmp_path, extra="metrics 127.0.0.1:0\n")
    first = r.m.exporter
    old = r.workers()
    r.say("M %d c=2 s|connect|connected=2" % old[0])
    r.rewrite("listen 127.0.0.1:0\nworkers 2\nmetrics 127.0.0.1:0 10.0.0.0/8\n" + PERMIT)
    r.signal(signal.SIGHUP)
    r.boot(2)
    assert r.m.exporter is first and [s.text for s in first.allowed] == ["10.0.0.0/8"]
    for p in old:
        r.say("R %d" % p)
        r.os.exit(p, 0)
    r.step()
    assert metric(r, CONNECTED) == 2 and metric(r, "sockd_reloads_total") == 1
    assert metric(r, "sockd_generation") == 2
    r.rewrite("listen 127.0.0.1:0\nworkers 2\nmetrics 127.0.0.2:0\n" + PERMIT)
    gen2 = r.workers(2)
    r.signal(signal.SIGHUP)
    r.boot(3)
    for p in gen2:
        r.say("R %d" % p)
        r.os.exit(p, 0)
    r.step()
    assert r.m.phase is M.SERVING
    assert r.m.exporter is not first and first.sock.fd == -1 and r.m.exporter.address == ("127.0.0.2", 0)
    assert "metrics: no longer serving 127.0.0.1:0" in logged
    r.rewrite("listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    r.signal(signal.SIGHUP)
    r.boot(4)
    assert r.m.exporter is None
    assert metric(r, CONNECTED) == 2


def test_metrics_active_sessions_by_worker_and_the_fork_children(tmp_path, logged):
    r = threads(tmp_path, extra="metrics 127.0.0.1:0\n")
    a, b = r.workers()
    r.say("C %d 3" % a)
    r.step()
    text = r.m.metrics_text()
    assert 'sockd_sessions_active{model="threads",worker="1",generation="1"} 3' in text
    assert 'sockd_sessions_active{model="threads",worker="2",generation="1"} 0' in text
    f = Run(tmp_path, "listen 127.0.0.1:0\nmetrics 127.0.0.1:0\n" + PERMIT, model="fork")
    f.step()
    f.os.listeners[0].connect()
    f.os.listeners[0].connect()
    f.step()
    assert 'sockd_sessions_active{model="fork",worker="children",generation="1"} 2' in f.m.metrics_text()


def test_metrics_workers_forked_by_a_reload_close_its_new_endpoint_too(tmp_path, logged, monkeypatch):
    r = threads(tmp_path, extra="metrics 127.0.0.1:0\n")
    forgotten = []
    # each fork runs the child's side first: which endpoints would the new worker close?
    monkeypatch.setattr(M.Master, "forget",
                        lambda self, keep=(), close_status=False: forgotten.append(
                            sorted(ex.address for ex in self.endpoints)))
    real_fork = r.os.fork

    def fork():
        r.m.forget()
        return real_fork()
    monkeypatch.setattr(r.os, "fork", fork)
    r.rewrite("listen 127.0.0.1:0\nworkers 2\nmetrics 127.0.0.2:0\n" + PERMIT)
    r.signal(signal.SIGHUP)
    assert forgotten == [[("127.0.0.1", 0), ("127.0.0.2", 0)]] * 2


def test_affinity_cpu_asks_for_a_socket_per_cpu_in_the_threads_model_only(tmp_path, logged):
    r = threads(tmp_path, extra="affinity cpu\n")
    assert r.os.groups == [r.os.cpus]
    # the fake's listener is one socket: the log says it is not steered
    assert any(line.startswith("affinity cpu: 127.0.0.1:") and "not steered by CPU" in line for line in logged)
    r2 = Run(tmp_path, "listen 127.0.0.1:0\nmodel fork\naffinity cpu\n" + PERMIT)
    assert r2.os.groups == [0]
    assert "affinity cpu: the fork model has no workers to pin; ignored" in logged
    r3 = threads(tmp_path)
    assert r3.os.groups == [0]
