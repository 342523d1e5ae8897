"""sdnotify.py: NOTIFY_SOCKET's datagrams to a real unix socket (a path and
the abstract namespace), the watchdog's rhythm and STATUS='s pace; and the
master's moments for them, driven on the fake OS (tests/fakeos.py)."""

import os
import signal
import socket
import uuid

import pytest

from sockd import sdnotify as N
from test_master import PERMIT, Run, logged  # noqa: F401 (a fixture)


class Receiver:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(2)

    def get(self):
        return self.sock.recv(4096).decode()

    def close(self):
        self.sock.close()


def test_notify_address_paths_and_the_abstract_namespace():
    assert N.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert N.notify_address("@sd-notify") == "\0sd-notify"
    for text in (None, "", "relative/path", "vsock:2:1234"):
        assert N.notify_address(text) is None


def test_watchdog_interval_is_half_and_only_for_us():
    assert N.watchdog_interval("10000000", None, 42) == 5.0
    assert N.watchdog_interval("10000000", "42", 42) == 5.0
    assert N.watchdog_interval("10000000", "43", 42) is None           # another process's
    for usec in (None, "", "0", "-5", "ten"):
        assert N.watchdog_interval(usec, None, 42) is None
    assert N.watchdog_interval("10000000", "x", 42) is None


def test_from_environ_reads_once_and_unsets():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7", "OTHER": "1"}
    n = N.Notifier.from_environ(env, pid=7)
    assert n.enabled and n.address == "\0x" and n.watchdog == 2.0
    assert env == {"OTHER": "1"}                  # the workers and shell commands do not see them
    off = N.Notifier.from_environ({"WATCHDOG_USEC": "4000000"}, pid=7)
    assert not off.enabled and off.watchdog is None and off.wait(0) is None


def test_send_to_a_path_and_to_an_abstract_socket(tmp_path):
    r = Receiver(str(tmp_path / "notify"))
    name = "sockd-test-%s" % uuid.uuid4().hex
    a = Receiver("\0" + name)
    try:
        assert N.Notifier(str(tmp_path / "notify")).send("READY=1", "STATUS=up")
        assert r.get() == "READY=1\nSTATUS=up"
        n = N.Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        n.ready("serving", 0.0)
        assert a.get() == "READY=1\nSTATUS=serving"
        n.reloading(123456789, "reloading /etc/sockd.conf", 0.0)
        assert a.get() == "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading /etc/sockd.conf"
        n.stopping("stop\nnow", 0.0)
        assert a.get() == "STOPPING=1\nSTATUS=stop now"         # one line per field, always
    finally:
        r.close()
        a.close()


def test_a_socket_nobody_listens_on_is_no_error(tmp_path):
    n = N.Notifier(str(tmp_path / "nobody"))
    assert n.send("READY=1") is False and n.failures == 1
    assert N.Notifier().send("READY=1") is False                  # off: nothing at all


class Recording(N.Notifier):
    def __init__(self, watchdog=None):
        super().__init__("@rec", watchdog)
        self.sent = []

    def send(self, *lines):
        self.sent.append(lines)
        return True


def test_the_watchdog_pings_at_its_interval_and_status_changes_at_most_every_two_seconds():
    n = Recording(watchdog=5.0)
    n.start(100.0)
    assert n.wait(100.0) == 5.0 and n.wait(104.0) == 1.0 and n.wait(106.0) == 0.0
    asked = []

    def status():
        asked.append(1)
        return "serving: %d" % len(asked)
    n.tick(101.0, status)
    assert n.sent == [] and asked == []                       # nothing due: not even asked
    n.tick(105.0, status)
    assert n.sent == [("WATCHDOG=1",)] and asked == []
    n.ready("serving: 0", 105.5)
    n.sent.clear()
    n.tick(106.0, status)
    assert n.sent == [] and asked == []                       # STATUS= just sent with READY=1
    n.tick(107.6, status)
    assert n.sent == [("STATUS=serving: 1",)]
    n.tick(110.1, lambda: "serving: 1")
    assert n.sent[-1] == ("WATCHDOG=1",)                      # unchanged: no STATUS=


# --- the master's moments (fake OS) ----------------------------------------------------------------

def notes(r):
    return r.os.notifier_made


def test_ready_once_every_worker_serves_with_a_status_line(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    r.step()
    assert notes(r).said("READY=1") == []
    r.boot(1)
    (ready,) = notes(r).said("READY=1")
    assert ready == ("READY=1", "STATUS=serving: generation 1 (threads model), 0 clients, 2 workers")


def test_the_fork_model_is_ready_when_listening(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nmodel fork\n" + PERMIT)
    r.step()
    assert notes(r).said("READY=1") == [("READY=1", "STATUS=serving: generation 1 (fork model), 0 clients")]


def test_sighup_reloading_with_monotonic_usec_then_ready_once_the_new_generation_serves(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 1\n" + PERMIT)
    r.boot(1)
    notes(r).sent.clear()
    at = r.os.now
    r.signal(signal.SIGHUP)
    (rel,) = notes(r).sent
    assert rel[:2] == ("RELOADING=1", "MONOTONIC_USEC=%d" % int(at * 1e6))
    assert rel[2] == "STATUS=reloading %s" % r.path
    r.boot(2)
    assert notes(r).sent[-1][0] == "READY=1"
    assert "generation 2" in notes(r).sent[-1][1] and "older workers finishing" in notes(r).sent[-1][1]


def test_a_failed_reload_is_ready_again_with_the_reason(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 1\n" + PERMIT)
    r.boot(1)
    r.rewrite("frobnicate\n")
    r.signal(signal.SIGHUP)
    assert [d[0] for d in notes(r).sent[-2:]] == ["RELOADING=1", "READY=1"]
    assert notes(r).sent[-1][1].startswith("STATUS=reload failed: 1 problem in ")


def test_stopping_on_sigterm(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 1\n" + PERMIT)
    r.boot(1)
    r.signal(signal.SIGTERM)
    assert notes(r).sent[-1] == ("STOPPING=1", "STATUS=stopping: 0 clients, 1 worker still finishing")


def test_status_counts_what_the_workers_say_and_forgets_the_dead(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 2\n" + PERMIT)
    r.boot(1)
    a, b = r.workers()
    r.say("C %d 3" % a, "C %d 4" % b, "C 99999 50")               # an unknown pid does not count
    r.os.now += 3
    r.step()
    assert notes(r).sent[-1] == ("STATUS=serving: generation 1 (threads model), 7 clients, 2 workers",)
    r.os.exit(a, -9)
    r.os.now += 3
    r.step()
    assert r.m.clients_now() == 4


def test_the_master_polls_no_longer_than_the_watchdog_allows(tmp_path, logged):
    r = Run(tmp_path, "listen 127.0.0.1:0\nworkers 1\n" + PERMIT)
    n = notes(r)
    n.watchdog = 0.3
    n.start(r.os.now)
    r.boot(1)
    n.sent.clear()
    r.step(10)
    assert len(n.said("WATCHDOG=1")) >= 9
    assert max(r.os.poller_made.waits[-10:]) <= 0.3 + 1e-9


def test_no_notify_socket_no_cost(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = N.Notifier.from_environ()
    assert not n.enabled
    n.ready("x", 0)
    n.tick(1e9, lambda: pytest.fail("asked for a status"))


def test_the_environment_variables_are_gone_after_reading(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@nobody-%s" % uuid.uuid4().hex)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    N.Notifier.from_environ()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
