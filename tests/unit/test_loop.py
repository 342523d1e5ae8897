"""sockd.loop: the epoll loop, its timers (a heap for short ones, a wheel of
one-second buckets for the rest), call_soon_threadsafe and handle_error.
(The executors are pools.py's: test_pools.py.)

Driven for real: a sockd.loop.Loop, socket pairs for events, real threads
for the cross-thread call, real time for the timers
(short, and one wheel timer of about a second).  The loop's own log is
recorded so that the internal-error lines can be checked.
"""

import select
import socket
import threading
import time

from sockd import loop as L

from loopkit import fd_count, run_for, run_until, watched


class Owner:
    """What a handler belongs to: close() must end it (and its fd)."""

    def __init__(self, loop, sock=None, fail_close=False):
        self.loop = loop
        self.sock = sock
        self.closed = 0
        self.fail_close = fail_close
        self.events = []

    def on_event(self, ev):
        self.events.append(ev)
        raise ZeroDivisionError("a bug in a handler")

    def boom(self, *args):
        raise KeyError("a bug in a callback")

    def close(self):
        self.closed += 1
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
        if self.fail_close:
            raise RuntimeError("and a bug while closing")


def recorder():
    fired = []

    def make(name):
        def cb():
            fired.append((name, time.monotonic()))
        return cb
    return fired, make


# --- timers ----------------------------------------------------------------------------------------

def test_short_timers_fire_in_time_order_and_never_early(loop):
    fired, make = recorder()
    start = loop.now = time.monotonic()
    for name, delay in (("c", 0.06), ("a", 0.02), ("b", 0.04), ("a2", 0.021)):
        loop.call_later(delay, make(name))
    assert run_until(loop, lambda: len(fired) == 4)
    assert [n for n, _ in fired] == ["a", "a2", "b", "c"]
    due = {"a": 0.02, "a2": 0.021, "b": 0.04, "c": 0.06}
    for name, at in fired:
        assert at - start >= due[name] - 0.001, name


def test_short_timers_go_to_the_heap_long_ones_to_the_wheel(loop):
    now = loop.now
    short = loop.call_later(0.999, lambda: None)
    assert short.bucket is None and short in loop.timers
    for delay in (1.0, 1.5, 30, 7200):
        t = loop.call_later(delay, lambda: None)
        assert t.bucket is not None and t in loop.wheel[t.when]
        # the bucket is the next whole second after the due time: at most a second late, never early
        assert 0 < t.when - (now + delay) <= 1.0
        assert t.when == int(now + delay) + 1
    assert loop.wheel_keys[0] == min(loop.wheel)


def test_cancelled_timers_never_fire(loop):
    fired, make = recorder()
    heap = loop.call_later(0.01, make("heap"))
    wheel = loop.call_later(1.5, make("wheel"))
    bucket = wheel.bucket
    heap.cancel()
    wheel.cancel()
    assert wheel not in bucket and wheel.bucket is None and wheel.callback is None
    wheel.cancel()                                   # twice is harmless
    loop.call_later(0.03, make("later"))
    assert run_until(loop, lambda: fired)
    run_for(loop, 0.03)
    assert [n for n, _ in fired] == ["later"]


def test_wheel_timers_fire_at_most_about_a_second_late(loop):
    fired, make = recorder()
    # the loop's clock as it is after a long round, so that the due times
    # are a tenth of a second away but still a second from the loop's "now"
    base = loop.now = time.monotonic() - 0.9
    due = {"one": 1.0, "one-and-a-bit": 1.05}
    for name, delay in due.items():
        assert loop.call_later(delay, make(name)).bucket is not None
    loop.call_later(1.02, make("cancelled")).cancel()
    assert run_until(loop, lambda: len(fired) == 2, timeout=2.5)
    for name, at in fired:
        late = at - (base + due[name])
        assert -0.001 <= late <= 1.05, (name, late)
    assert sorted(n for n, _ in fired) == sorted(due)
    assert all(not b for b in loop.wheel.values())


def test_a_timer_may_stop_the_loop(loop):
    loop.call_later(0.01, loop.stop)
    start = time.monotonic()
    loop.run()
    assert time.monotonic() - start < 1.0 and not loop.running


# --- descriptors --------------------------------------------------------------------------------

def test_events_go_to_the_registered_handler_and_rebind_moves_them(loop, net):
    a, b = net.tcp_pair()
    got = {"first": [], "second": []}

    class H:
        def __init__(self, name):
            self.name = name

        def on_event(self, ev):
            got[self.name].append(ev)
            b.recv(100)

        def close(self):
            pass
    first, second = H("first"), H("second")
    b.setblocking(False)
    loop.add(b.fileno(), L.EPOLLIN, first.on_event)
    a.send(b"x")
    assert run_until(loop, lambda: got["first"])
    loop.rebind(b.fileno(), second.on_event)
    a.send(b"y")
    assert run_until(loop, lambda: got["second"])
    assert len(got["first"]) == 1 and got["second"][0] & L.EPOLLIN
    loop.remove(b.fileno())
    loop.remove(b.fileno())                          # twice is harmless
    assert b.fileno() not in watched(loop)
    a.send(b"z")
    run_for(loop, 0.03)
    assert len(got["second"]) == 1


def test_idle_hooks_run_every_round(loop):
    rounds = []
    loop.idle_hooks.append(lambda: rounds.append(1))
    loop.call_later(0.01, lambda: None)
    assert run_until(loop, lambda: len(rounds) >= 2)


def test_close_runs_the_close_hooks_and_stops_the_executor():
    lp = L.Loop()
    calls = []
    lp.close_hooks.append(lambda: calls.append("hook"))

    class Ex:
        def shutdown(self):
            calls.append("shutdown")
    lp.executor = Ex()
    lp.close()
    assert calls == ["hook", "shutdown"]


# --- handle_error ---------------------------------------------------------------------------------

def test_a_failing_handler_closes_its_owner_and_the_loop_goes_on(loop, net, looplog):
    a, b = net.tcp_pair()
    owner = Owner(loop, b)
    loop.add(b.fileno(), L.EPOLLIN, owner.on_event)
    a.send(b"x")
    fired = []
    loop.call_later(0.05, lambda: fired.append(1))
    assert run_until(loop, lambda: fired)
    assert owner.closed == 1 and len(owner.events) == 1
    assert b.fileno() not in watched(loop)
    assert looplog.lines("error") == ["internal error: ZeroDivisionError: a bug in a handler"]
    assert any("Traceback" in line for line in looplog.lines("debug"))
    looplog.clear()


def test_a_failing_timer_or_cross_thread_callback_closes_its_owner(loop, looplog):
    owner = Owner(loop)
    loop.call_later(0.01, owner.boom)
    assert run_until(loop, lambda: owner.closed == 1)
    loop.call_soon_threadsafe(owner.boom, 1, 2)
    assert run_until(loop, lambda: owner.closed == 2)
    wheel_owner = Owner(loop)
    loop.now = time.monotonic() - 5                  # so that a wheel timer is already due
    t = loop.call_later(1.0, wheel_owner.boom)
    assert t.bucket is not None
    assert run_until(loop, lambda: wheel_owner.closed == 1)
    assert looplog.having("internal error: KeyError", "error")
    looplog.clear()


def test_an_error_while_closing_is_logged_and_the_loop_goes_on(loop, looplog):
    owner = Owner(loop, fail_close=True)
    loop.call_later(0.01, owner.boom)
    fired = []
    loop.call_later(0.03, lambda: fired.append(1))
    assert run_until(loop, lambda: fired)
    assert owner.closed == 1
    assert looplog.having("internal error while closing: RuntimeError: and a bug while closing", "error")
    looplog.clear()


def test_a_callback_without_an_owner_is_logged_only(loop, looplog):
    """Nothing to close (which is why sockd registers bound methods only:
    the unit fixture checks that for every module)."""
    def bare():
        raise ValueError("no owner")
    loop.call_later(0.01, bare)
    fired = []
    loop.call_later(0.03, lambda: fired.append(1))
    assert run_until(loop, lambda: fired)
    assert looplog.lines("error") == ["internal error: ValueError: no owner"]
    looplog.clear()


# --- across threads ---------------------------------------------------------------------------------

def test_call_soon_threadsafe_runs_the_callback_on_the_loop(loop):
    got = []
    main = threading.get_ident()
    t = threading.Thread(target=lambda: loop.call_soon_threadsafe(
        lambda *a: got.append((threading.get_ident(), a)), "x", 2))
    t.start()
    assert run_until(loop, lambda: got)
    t.join(2)
    assert got == [(main, ("x", 2))]


def test_flags_are_epolls():
    assert (L.EPOLLIN, L.EPOLLOUT, L.EPOLLERR, L.EPOLLHUP) == (
        select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP)


def test_a_loop_holds_two_descriptors_and_gives_them_back():
    before = fd_count()
    lp = L.Loop()
    assert fd_count() == before + 2                  # epoll and eventfd
    lp.close()
    assert fd_count() == before


def test_forget_drops_the_handler_and_close_the_registration():
    """Loop.forget: for a descriptor closed next that no other process
    holds; its close(2) ends the kernel's registration."""
    loop = L.Loop()
    a, b = socket.socketpair()
    try:
        loop.add(a.fileno(), L.EPOLLIN, lambda ev: None)
        fd = a.fileno()
        loop.forget(fd)
        assert fd not in loop.handlers
        a.close()
        with open("/proc/self/fdinfo/%d" % loop.ep.fileno()) as f:
            assert not any(line.startswith("tfd:") and int(line.split()[1]) == fd for line in f)
    finally:
        b.close()
        loop.close()
