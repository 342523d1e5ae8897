"""The poll loop a worker serves its clients from, its timers, and the pool
of helper threads for the steps that block.

One loop per process, on epoll (never select.select, which fails past
descriptor 1023).  Handlers are bound methods taking the event mask; when
one raises, the loop logs it and calls ``close()`` on the handler's object,
which must end whatever that object serves (a session, a lookup, a
relay), so that nothing stays registered after a bug.
Timers of a second or more (the negotiate, connect, identd and idle
timeouts: one or more per client) go to a wheel of one-second buckets, so
that setting and cancelling one is a set operation and a cancelled timer
costs nothing afterwards; shorter ones go to a heap.  Work that would block the loop
(name resolution, password hashing) runs on ``executor``, the helper
threads of pools.py, whose results come back through
``call_soon_threadsafe`` and an eventfd; by default (a fork-model child, or
inetd: one client) it is a pools.InlineExecutor, which runs the work at
once.
"""

import heapq
import os
import select
import threading
import time
import traceback

from .log import log
from .pools import InlineExecutor

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)


class Timer:
    __slots__ = ("when", "callback", "cancelled", "bucket")

    def __init__(self, when, callback, bucket=None):
        self.when, self.callback, self.cancelled, self.bucket = when, callback, False, bucket

    def cancel(self):
        self.cancelled = True
        self.callback = None
        b = self.bucket
        if b is not None:
            b.discard(self)
            self.bucket = None

    def __lt__(self, other):
        return self.when < other.when


class Loop:
    def __init__(self):
        self.ep = select.epoll()
        self.handlers = {}
        self.timers = []          # heap of short Timers
        self.wheel = {}           # whole second -> set of Timers due then
        self.wheel_keys = []      # heap of the seconds in ``wheel``
        self.now = time.monotonic()
        self.running = False
        self._calls = []
        self._calls_lock = threading.Lock()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep.register(self._wake_fd, EPOLLIN)
        self.handlers[self._wake_fd] = self._on_wake
        self.executor = InlineExecutor(self)
        self.idle_hooks = []
        self.close_hooks = []
        # modify(fd, mask) is epoll's own: a relay changes a mask twice per
        # client, and a Python method around it was a frame each time
        self.modify = self.ep.modify

    # --- descriptors ---
    def add(self, fd, mask, handler):
        self.handlers[fd] = handler
        self.ep.register(fd, mask)

    def rebind(self, fd, handler):
        """Hand a registered descriptor's events to another handler (no
        system call)."""
        self.handlers[fd] = handler

    def forget(self, fd):
        """remove() for a descriptor that is closed next and that no other
        process holds: its close(2) ends the registration (epoll drops an
        item when the last descriptor of its file goes), so only the
        handler goes here, without an epoll_ctl."""
        self.handlers.pop(fd, None)

    def remove(self, fd):
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # --- timers ---
    def call_later(self, delay, callback):
        return self.call_at(self.now + delay, callback)

    def call_at(self, when, callback):
        if when - self.now >= 1.0:
            key = int(when) + 1          # at most a second late
            b = self.wheel.get(key)
            if b is None:
                b = self.wheel[key] = set()
                heapq.heappush(self.wheel_keys, key)
            t = Timer(key, callback, b)
            b.add(t)
            return t
        t = Timer(when, callback)
        heapq.heappush(self.timers, t)
        return t

    # --- cross-thread ---
    def call_soon_threadsafe(self, callback, *args):
        with self._calls_lock:
            self._calls.append((callback, args))
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _on_wake(self, events):
        try:
            os.eventfd_read(self._wake_fd)
        except OSError:
            pass
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for cb, args in calls:
            try:
                cb(*args)
            except Exception:
                self.handle_error(cb)

    def stop(self):
        self.running = False
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def run(self, until=None):
        """Serve until stop() (or until ``until()`` is true after an event)."""
        self.running = True
        handlers = self.handlers
        timers = self.timers
        wheel, wheel_keys = self.wheel, self.wheel_keys
        poll = self.ep.poll
        monotonic = time.monotonic
        while self.running:
            nxt = timers[0].when if timers else 1e18
            if wheel_keys and wheel_keys[0] < nxt:
                nxt = wheel_keys[0]
            timeout = nxt - monotonic()
            if timeout > 3600:
                timeout = 3600
            elif timeout < 0:
                timeout = 0
            try:
                events = poll(timeout)
            except InterruptedError:
                events = ()
            self.now = now = monotonic()
            for fd, ev in events:
                h = handlers.get(fd)
                if h is not None:
                    try:
                        h(ev)
                    except Exception:
                        self.handle_error(h)
            while timers and timers[0].when <= now:
                t = heapq.heappop(timers)
                if not t.cancelled:
                    cb = t.callback
                    t.callback = None
                    try:
                        cb()
                    except Exception:
                        self.handle_error(cb)
            while wheel_keys and wheel_keys[0] <= now:
                for t in list(wheel.pop(heapq.heappop(wheel_keys))):
                    t.bucket = None
                    cb = t.callback
                    if cb is not None:
                        t.callback = None
                        try:
                            cb()
                        except Exception:
                            self.handle_error(cb)
            for hook in self.idle_hooks:
                hook()
            if until is not None and until():
                break

    def handle_error(self, callback):
        """A bug met one client: log it, close the object the callback
        belongs to (its ``__self__``), keep serving.  Never raises: the
        loop must outlive whatever went wrong."""
        try:
            lines = traceback.format_exc().splitlines()
            log.error("internal error: %s" % (lines[-1] if lines else "?"))
            for line in lines:
                log.debug(line)
            owner = getattr(callback, "__self__", None)
            close = getattr(owner, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.error("internal error while closing: %s" % traceback.format_exc().splitlines()[-1])
        except Exception:
            pass

    def close(self):
        for hook in self.close_hooks:
            hook()
        self.executor.shutdown()
        self.ep.close()
        os.close(self._wake_fd)
