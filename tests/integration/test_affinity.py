"""``affinity cpu`` (issue 17): each worker pinned to one CPU, a socket per
CPU on every listener, and the kernel hands a connection to the socket of
the CPU it arrived on, so the worker on that CPU serves it.  On loopback
a connection arrives on the CPU its client sends from: a client thread
pinned to CPU k must be served by the worker pinned to CPU k, through a
reload, after that worker is killed and replaced, and with more workers
than CPUs; a second sockd on the port still fails as "in use"."""

import os
import re
import signal
import socket
import threading

import pytest

import helpers

CONF = "affinity cpu\ntimeout shutdown 2\npermit 127.0.0.0 255.0.0.0\n"
CPUS = sorted(os.sched_getaffinity(0))
ALL = os.cpu_count()

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to steer between (this machine has one)")


def pinned_cpu(pid):
    """The CPUs ``pid`` may run on, as /proc/PID/status lists them."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return None


def from_cpu(cpu, proxy, port, n=4):
    """``n`` CONNECTs through ``proxy``, each echoing a line, from a thread
    pinned to ``cpu`` (the SYN leaves, and on loopback arrives, there)."""
    errors = []

    def run():
        try:
            os.sched_setaffinity(0, {cpu})
            for i in range(n):
                s, rep, _ = helpers.socks5_connect(proxy, "127.0.0.1", port)
                with s:
                    assert rep == 0
                    line = b"cpu %d try %d\n" % (cpu, i)
                    s.sendall(line)
                    assert helpers.recv_exact(s, len(line)) == line
        except BaseException as exc:      # reported by the test, not lost in the thread
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive(), "clients on CPU %d did not finish" % cpu
    assert not errors, errors


def served_by(s, since, count):
    """{pid: "terminated" lines} of the log after offset ``since``, once
    ``count`` of them are there."""
    def lines():
        found = re.findall(r"sockd\[(\d+)\]: terminated -- Connect", s.log()[since:])
        return found if len(found) >= count else None
    found = helpers.wait_for(lines, 10, what="%d terminated lines" % count)
    out = {}
    for pid in found:
        out[int(pid)] = out.get(int(pid), 0) + 1
    return out


def wait_pinned(s, n, timeout=15):
    """The PIDs of ``n`` workers, once each is pinned to one CPU (a worker
    pins itself as it starts, after the fork that makes it a child)."""
    def ready():
        pids = s.worker_pids()
        return len(pids) == n and all(pinned_cpu(p) in [str(c) for c in CPUS] for p in pids) and sorted(pids)
    return helpers.wait_for(ready, timeout, what="%d pinned workers" % n)


def worker_on(s, cpu, n):
    """The PID of the worker pinned to ``cpu`` among ``n`` workers."""
    pids = wait_pinned(s, n)
    mine = [p for p in pids if pinned_cpu(p) == str(cpu)]
    assert len(mine) >= 1, {p: pinned_cpu(p) for p in pids}
    return mine


def steered(s, echo_server, n):
    """Clients from each CPU sockd may use are served by a worker pinned there."""
    for cpu in CPUS[:2]:
        since = len(s.log())
        from_cpu(cpu, s.addr, echo_server.port)
        by = served_by(s, since, 4)
        assert set(by) <= set(worker_on(s, cpu, n)), (cpu, by, {p: pinned_cpu(p) for p in s.worker_pids()})


def test_each_worker_is_pinned_and_serves_its_cpus_clients(start_sockd, echo_server):
    s = start_sockd(CONF, workers=2)
    assert "(threads model, a socket per CPU: %d)" % ALL in s.log()
    pids = wait_pinned(s, 2)
    assert sorted(pinned_cpu(p) for p in pids) == sorted(str(c) for c in CPUS[:2])
    helpers.greeted(s.addr)
    steered(s, echo_server, 2)
    # the master holds the whole group: each worker has the sockets of both
    # CPUs open, and the group's sockets share one port
    assert helpers.fds_of(s.proc.pid, "socket:") >= ALL
    assert all(helpers.fds_of(p, "socket:") >= ALL for p in pids)


def test_a_killed_worker_is_replaced_on_its_cpu_and_its_queue_kept(start_sockd, echo_server):
    s = start_sockd(CONF, workers=2)
    s.wait_workers(2)
    victim = worker_on(s, CPUS[0], 2)[0]
    os.kill(victim, signal.SIGKILL)
    s.wait_log(r"worker 1 \(pid %d\) exited|worker 2 \(pid %d\) exited" % (victim, victim))
    helpers.wait_for(lambda: len(s.worker_pids()) == 2 and victim not in s.worker_pids(), 10,
                     what="the replacement")
    wait_pinned(s, 2)
    helpers.greeted(s.addr)
    steered(s, echo_server, 2)


def test_steering_survives_a_reload(start_sockd, echo_server):
    s = start_sockd(CONF, workers=2)
    s.wait_workers(2)
    os.kill(s.proc.pid, signal.SIGHUP)
    s.wait_log(r"reloaded")
    wait_pinned(s, 2)       # the older workers gone, the new ones pinned
    helpers.greeted(s.addr)
    steered(s, echo_server, 2)


def test_more_workers_than_cpus_leave_no_socket_unserved(start_sockd, echo_server):
    n = len(CPUS) + 1
    s = start_sockd(CONF, workers=n)
    wait_pinned(s, n)
    for cpu in CPUS:
        since = len(s.log())
        from_cpu(cpu, s.addr, echo_server.port, n=6)
        by = served_by(s, since, 6)
        assert set(by) <= set(worker_on(s, cpu, n))


def test_a_second_sockd_on_the_port_still_fails(start_sockd):
    s = start_sockd(CONF, workers=2)
    s.wait_workers(2)
    conf = "listen 127.0.0.1:%d\n%s" % (s.port, CONF)
    with pytest.raises(AssertionError) as err:
        start_sockd(conf, workers=2, name="second")
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % s.port in str(err.value)
    # and the first still serves
    helpers.greeted(s.addr)


def test_the_fork_model_says_it_has_no_workers_to_pin(start_sockd, echo_server):
    s = start_sockd(CONF, model="fork")
    s.wait_log(r"affinity cpu: the fork model has no workers to pin; ignored")
    assert "a socket per CPU" not in s.log()
    c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
    with c:
        assert rep == 0
        c.sendall(b"hello\n")
        assert helpers.recv_exact(c, 6) == b"hello\n"


def test_a_reload_into_the_fork_model_serves_every_socket_of_the_group(start_sockd, echo_server, tmp_path):
    """A listener opened as a group (threads model), kept by a reload into
    the fork model: the master accepts from every socket of it."""
    listen = "listen 127.0.0.1:%d\n" % helpers.free_port()
    s = start_sockd(listen + CONF, workers=2)
    s.wait_workers(2)
    with open(s.conf_path, "w") as f:
        f.write(listen + "model fork\n" + CONF)
    os.kill(s.proc.pid, signal.SIGHUP)
    s.wait_log(r"reloaded")
    for cpu in CPUS[:2]:
        since = len(s.log())
        from_cpu(cpu, s.addr, echo_server.port, n=2)
        served_by(s, since, 2)
