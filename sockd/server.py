"""Processes: the master, its workers (threads model) or children (fork
model), and the single-client inetd mode.

The master owns the listening sockets and never touches client data.  In
the threads model it pre-forks N workers; each worker accepts from the
shared listeners (EPOLLEXCLUSIVE wakes one worker per connection) and
serves all its clients from one poll loop, with a bounded pool of helper
threads for the steps that block.  In the fork model the master accepts and
forks one child per client, like the classic stand-alone sockd, up to a cap.
Workers and children give up root (user, group, chroot) before serving.

Signals: handlers only record (the C-level wakeup fd carries the signal
number into a poll loop, which acts on it).  In the master:

* SIGHUP re-reads the configuration.  The new ports are opened and a new
  generation of workers is started beside the old ones; only when all of
  that worked are the dropped ports closed and the old workers told to
  stop accepting and finish their live connections (classic behaviour:
  they are kept).  On any problem (the file, a port, a worker that cannot
  start) the old configuration, ports and workers simply go on.  The
  ports that stay are never closed, so no client is refused.  "reloaded"
  is logged once every old worker has said (status pipe) that it stopped
  accepting.  With ``reload recheck yes`` the master first hands the new
  configuration to every older process through an inherited memory file
  (``Channel``), and each closes the connections it no longer permits.
* SIGTERM: stop accepting, let live connections finish for up to
  ``timeout shutdown``, close the rest, exit 0.  SIGINT: stop at once.
* SIGUSR1: the state of the master and of every worker or child, to the log.

A worker that dies is replaced; one that cannot start exits with
WORKER_BOOT_ERROR and the master stops instead of restarting it forever.
Children and workers leave with os._exit, and stop by themselves when the
master has gone (the read end of a pipe only the master can write to).
"""

import collections
import errno
import gc
import os
import select
import signal
import socket
import stat
import time

from . import privileges, recheck
from . import config as C
from .errors import Halt, PrivilegeError, WORKER_BOOT_ERROR
from .log import log
from .loop import Loop, ThreadExecutor, EPOLLIN, EPOLLEXCLUSIVE
from .rules import ip_key
from .addresses import load_services
from .session import Context, Session
from .channel import fetch_recheck
from .listeners import open_listeners, sock_name
from .osfacade import OS, setproctitle
from .signals import HANDLED_SIGNALS, Signals, reset_child_signals, sigmask as _sigmask

BOOT_WAIT = 10.0          # seconds the master waits for its first workers to start
KILL_GRACE = 5.0          # after timeout shutdown, before SIGKILL


def make_limits(cfg, previous=None):
    """The shared client counts, when any limit is set (None otherwise: no
    cost at all).  The fork model caps its children by ``limit clients``
    itself; the threads model counts them here."""
    total = cfg.limit_clients if cfg.model == "threads" else 0
    if not (total or cfg.limit_per_address or cfg.limit_rate):
        return None
    from .limits import Limits
    if previous is not None:
        previous.total, previous.per_address, previous.rate = total, cfg.limit_per_address, cfg.limit_rate
        return previous
    return Limits(total, cfg.limit_per_address, cfg.limit_rate)


def connect_log():
    """Connect the syslog socket now (before a chroot hides its path)."""
    log.reopen()
    with log._lock:
        if log._sock is None:
            log._connect()


def describe_exc(exc):
    return str(exc) if isinstance(exc, (Halt, PrivilegeError)) else "%s: %s" % (
        type(exc).__name__, getattr(exc, "strerror", None) or exc)


# --- the threads model: one worker --------------------------------------------------------

class Worker:
    """A pre-forked worker: accepts and serves clients from one poll loop.
    Built in the master; run() runs after the fork and never returns."""

    def __init__(self, number, generation, cfg, listeners, ident_mode, sigmask=(), identity=None,
                 channel=None, alive_fd=-1, status_fd=-1, proxy_trust=None, limits=None):
        self.proxy_trust = proxy_trust or {}    # listener fd -> trusted PROXY protocol sources
        self.limits = limits                    # shared Limits, this worker's column set
        self.number = number
        self.generation = generation
        self.seen_generation = generation
        self.cfg = cfg
        self.listeners = listeners
        self.ident_mode = ident_mode
        self.sigmask = sigmask
        self.identity = identity
        self.channel = channel
        self.alive_fd = alive_fd
        self.status_fd = status_fd
        self.accepting = False
        self.stopping = False
        self.retiring = False
        self.deadline_timer = None
        self.paused_until = 0.0
        self.title_at = 0.0
        self.title_timer = None
        self.started = time.time()

    def run(self):
        try:
            self.boot()
        except BaseException as exc:
            try:
                log.error("worker %d could not start: %s" % (self.number, describe_exc(exc)))
            finally:
                os._exit(WORKER_BOOT_ERROR)
        status = 0
        try:
            self.loop.run()
        except BaseException as exc:            # a worker must never die silently
            log.error("worker %d: %s" % (self.number, describe_exc(exc)))
            status = 1
            import traceback
            for line in traceback.format_exc().splitlines():
                log.error(line)
        finally:
            try:
                self.loop.close()
            except BaseException:
                pass
            os._exit(status)

    def boot(self):
        reset_child_signals()
        self.loop = loop = Loop()
        self.signals = Signals()
        _sigmask(signal.SIG_SETMASK, self.sigmask)
        loop.add(self.signals.r, EPOLLIN, self.on_signal)
        if self.alive_fd >= 0:
            loop.add(self.alive_fd, EPOLLIN, self.on_master_gone)
        become(self.identity)
        loop.executor = ThreadExecutor(loop, self.cfg.threads)
        self.ctx = Context(self.cfg, loop, log, self.ident_mode)
        self.ctx.limits = self.limits
        self.ctx.on_close = self.on_session_closed
        self.start_accepting()
        self.set_title()
        self.tell_master(b"B %d %d\n" % (self.generation, self.number))

    def tell_master(self, line):
        """A line on the master's status pipe (atomic: shorter than
        PIPE_BUF): "B generation number" when serving, "R pid" when
        retired."""
        if self.status_fd >= 0:
            try:
                os.write(self.status_fd, line)
            except OSError:
                pass

    def start_accepting(self):
        if self.accepting or self.stopping or self.retiring:
            return
        for s in self.listeners:
            self.loop.add(s.fileno(), EPOLLIN | EPOLLEXCLUSIVE, self.make_acceptor(s))
        self.accepting = True

    def stop_accepting(self):
        if not self.accepting:
            return
        for s in self.listeners:
            self.loop.remove(s.fileno())
        self.accepting = False

    def close_listeners(self):
        self.stop_accepting()
        for s in self.listeners:
            s.close()
        self.listeners = []

    def make_acceptor(self, lsock):
        ctx = self.ctx
        trust = self.proxy_trust.get(lsock.fileno())
        here = lsock.getsockname()
        # a listener on one address: every client reached that address
        fixed = None if here[0] in ("0.0.0.0", "::") else here

        def on_accept(ev, most=32):
            for _ in range(most):
                try:
                    sock, peer = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.pause_accepting(exc)
                    break
                try:
                    Session(ctx, sock, peer, fixed or sock.getsockname(), True, trust)
                except OSError:
                    sock.close()
                    continue
            if self.title_timer is None:
                self.title_stale()
        return on_accept

    def pause_accepting(self, exc):
        """Out of descriptors: stop accepting for a moment instead of spinning."""
        now = self.loop.now
        if now >= self.paused_until + 5:
            log.error("accept: %s; pausing new connections" % exc.strerror)
        self.paused_until = now + 0.25
        self.stop_accepting()
        self.loop.call_later(0.25, self.resume_accepting)

    def resume_accepting(self):
        if not (self.stopping or self.retiring):
            self.start_accepting()

    def on_session_closed(self, session):
        ctx = self.ctx
        if self.stopping or self.retiring:
            if not ctx.sessions:
                self.loop.stop()
        elif not self.accepting and self.loop.now >= self.paused_until:
            self.start_accepting()
        if self.title_timer is None:
            self.title_stale()

    # --- the process title: at most once a second, and only when it changes
    def title_stale(self):
        self.title_timer = self.loop.call_at(max(self.loop.now, self.title_at), self.set_title)

    def set_title(self):
        self.title_timer = None
        self.title_at = self.loop.now + 1.0
        setproctitle("sockd: worker %d (%d clients)%s" % (
            self.number, len(self.ctx.sessions),
            " stopping" if self.stopping else " finishing" if self.retiring else ""))

    # --- signals
    def on_signal(self, ev):
        for sig in self.signals.read():
            if sig == signal.SIGTERM:
                self.graceful_stop()
            elif sig == signal.SIGINT:
                self.loop.stop()
            elif sig == signal.SIGUSR1:
                self.report()
            elif sig == signal.SIGHUP:
                self.retire()

    def on_master_gone(self, ev):
        self.loop.remove(self.alive_fd)
        log.error("worker %d: the master has gone; stopping" % self.number)
        self.graceful_stop()

    def graceful_stop(self):
        """SIGTERM: no new clients; live ones have ``timeout shutdown``."""
        if self.stopping:
            return
        self.stopping = True
        if self.accepting:
            # clients already in the kernel's queue are served, not reset
            for lsock in self.listeners:
                self.make_acceptor(lsock)(EPOLLIN, most=4096)
        self.close_listeners()
        self.set_title()
        if not self.ctx.sessions:
            self.loop.stop()
            return
        t = self.ctx.config.timeout_shutdown
        self.deadline_timer = self.loop.call_later(t, self.shutdown_deadline)

    def shutdown_deadline(self):
        live = list(self.ctx.sessions)
        if live:
            log.notice("worker %d: closing %d connection%s still open after %gs (timeout shutdown)" % (
                self.number, len(live), "" if len(live) == 1 else "s", self.ctx.config.timeout_shutdown))
        for s in live:
            s.close()
        self.loop.stop()

    def retire(self):
        """SIGHUP from the master: a newer generation of workers serves new
        clients; this one finishes its own, re-checked against the new rules
        when the master published them for that."""
        if not self.retiring and not self.stopping:
            self.retiring = True
            self.close_listeners()
            self.set_title()
        self.maybe_recheck()
        self.tell_master(b"R %d\n" % os.getpid())
        if not self.ctx.sessions:
            self.loop.stop()

    def maybe_recheck(self):
        cfg = fetch_recheck(self.channel, self.seen_generation, "worker %d" % self.number)
        if cfg is None:
            return
        self.seen_generation = cfg[0]
        self.ctx.config = cfg[1]       # negotiations still under way decide with the new rules
        recheck.recheck(self.ctx.sessions, cfg[1], log)

    def report(self):
        st = self.ctx.stats
        log.info("worker %d (pid %d, generation %d%s): %d clients; since start %ds ago: %s" % (
            self.number, os.getpid(), self.generation,
            ", stopping" if self.stopping else ", finishing" if self.retiring else "",
            len(self.ctx.sessions), time.time() - self.started,
            ", ".join("%s %d" % kv for kv in st.items())))


# --- the fork model and inetd: one client per process -----------------------------------------

_MASTER_LIMITS = [None]     # the fork-model master's Limits, for its children


class ChildLimits:
    """A fork-model child's view of the master's Limits: it counts its one
    (PROXY protocol) client in the master's column and says so on the status
    pipe, so that the master releases the count if the child dies first."""

    def __init__(self, limits, status_fd):
        self.limits = limits
        self.status_fd = status_fd

    def admit(self, key):
        got = self.limits.admit(key)
        if got[1] >= 0:
            self.tell(b"L %d %d\n" % (os.getpid(), got[1]))
        return got

    def release(self, slot):
        self.limits.release(slot)
        self.tell(b"U %d\n" % os.getpid())

    def tell(self, line):
        try:
            os.write(self.status_fd, line)
        except OSError:
            pass


class OneClient:
    """A process that serves exactly one client: a fork-model child (with
    signals, a title, the master's channel) or an inetd-mode sockd."""

    def __init__(self, cfg, sock, ident_mode=None, generation=0, channel=None, alive_fd=-1,
                 inherited=False, proxy=None, refusal=None, peer=None, status_fd=-1):
        self.peer = peer                # from the master's accept, when it has it
        self.status_fd = status_fd      # fork model: the master's status pipe (limits)
        self.inherited = inherited      # accepted from one of our listeners: options set
        self.proxy = proxy              # PROXY protocol sources this listener trusts
        self.refusal = refusal          # over a limit (the master counted): refuse politely
        self.cfg = cfg
        self.sock = sock
        self.ident_mode = ident_mode
        self.generation = generation
        self.channel = channel
        self.alive_fd = alive_fd
        self.signals = None
        self.session = None
        self.stopping = False

    def run(self, title=False, signals=None):
        """Serve until the client has gone.  ``signals``: a Signals made
        by the caller (fork-model children), or None (inetd mode keeps the
        default dispositions)."""
        loop = self.loop = Loop()
        ctx = self.ctx = Context(self.cfg, loop, log, self.ident_mode, bufsize=1 << 20)
        if self.status_fd >= 0:
            ctx.limits = ChildLimits(self.limits_of_master(), self.status_fd)
        try:
            # a fork-model child knows its peer from the master's accept: a
            # balancer's health check that has already gone is not an error
            peer = self.peer or self.sock.getpeername()
            local = self.sock.getsockname()
        except OSError:
            if self.peer is None:
                log.error("error -- unable to get client address.")
            self.sock.close()
            return
        if signals is not None:
            self.signals = signals
            loop.add(signals.r, EPOLLIN, self.on_signal)
        if self.alive_fd >= 0:
            loop.add(self.alive_fd, EPOLLIN, self.on_master_gone)
        session = self.session = Session(ctx, self.sock, peer, local, self.inherited, self.proxy, self.refusal)
        if title:
            def retitle():
                text = session.title()
                if text is not None:
                    setproctitle("sockd: " + text)
                    loop.idle_hooks.remove(retitle)
            setproctitle("sockd: client %s" % session.client_ip)
            loop.idle_hooks.append(retitle)
        # the session may be over already: a refusal, say, decided while
        # the constructor read the request that came with the connection
        if ctx.sessions:
            loop.run(until=lambda: not ctx.sessions)
        loop.close()

    @staticmethod
    def limits_of_master():
        return _MASTER_LIMITS[0]

    def on_signal(self, ev):
        for sig in self.signals.read():
            if sig == signal.SIGTERM:
                self.graceful_stop()
            elif sig == signal.SIGINT:
                self.close_all()
            elif sig == signal.SIGUSR1:
                s = self.session
                log.info("child (pid %d, generation %d): %s" % (os.getpid(), self.generation, s.status()))
            elif sig == signal.SIGHUP:
                got = fetch_recheck(self.channel, self.generation, "child %d" % os.getpid())
                if got is not None:
                    self.generation = got[0]
                    self.ctx.config = got[1]
                    recheck.recheck(self.ctx.sessions, got[1], log)

    def on_master_gone(self, ev):
        self.loop.remove(self.alive_fd)
        self.graceful_stop()

    def graceful_stop(self):
        if self.stopping:
            return
        self.stopping = True
        t = self.cfg.timeout_shutdown
        self.loop.call_later(t, self.close_all)

    def close_all(self):
        for s in list(self.ctx.sessions):
            s.close()


def serve_one(cfg, sock, ident_mode=None, title=False):
    """Serve exactly one client on ``sock`` (inetd mode, tests)."""
    OneClient(cfg, sock, ident_mode).run(title=title)


# --- the master --------------------------------------------------------------------------------

class Proc:
    """A process the master started: a worker or a fork-model child."""

    __slots__ = ("kind", "number", "started", "generation")

    def __init__(self, kind, number, generation, started):
        self.kind = kind                  # "worker" or "child"
        self.number = number              # worker number, or the client's address
        self.started = started            # monotonic
        self.generation = generation


class Master:
    def __init__(self, cfg, ident_mode=None, config_path=None, overrides=None, osys=None):
        self.os = osys or OS()
        self.overrides = dict(overrides or {})
        self.cfg = self.apply_overrides(cfg)
        self.ident_mode = ident_mode
        self.config_path = config_path or cfg.path
        self.listeners = {}        # (host, port, n) as written -> socket
        self.workers = {}          # pid -> Proc
        self.generation = 1        # the configuration new clients get
        self.generations = 1       # generations numbered so far
        self.stopping = None       # None, or the signal that stops us
        self.kill_at = None
        self.exit_status = 0
        self.boot_failures = []
        self.signals = None
        self.channel = None
        self.ready = None
        self.alive_r = self.alive_w = -1
        self.status_r = self.status_w = -1
        self.pending_drop = []     # listeners a reload drops, until it is done
        self.booted = set()        # (generation, worker number) reported serving
        self.retired = set()       # pids that reported retiring since the last reload
        self.started = self.os.time()
        self.counts = {"workers started": 0, "workers died": 0, "clients": 0, "reloads": 0,
                       "failed reloads": 0}
        self.limits = _MASTER_LIMITS[0] = make_limits(self.cfg)
        self.gone = collections.deque(maxlen=1024)   # pids reaped lately (limits bookkeeping)
        self.limit_held = {}       # pid -> ("column", n) for a worker, ("slot", n) for a child
        try:
            self.identity = privileges.resolve(self.cfg)
        except PrivilegeError as exc:
            raise Halt(str(exc)) from None
        # whatever a worker could not load once it is no longer root is
        # loaded here, once, for every process forked later
        if self.identity.changes_anything:
            privileges.preload()

    def apply_overrides(self, cfg):
        for key, value in self.overrides.items():
            cfg.set(key, value)
        return cfg

    @property
    def fork_model(self):
        return self.cfg.model == "fork"

    def bind(self):
        """Open the listening sockets (before detaching: a port that is
        taken is reported to whoever started us)."""
        self.listeners, added, _ = open_listeners(self.cfg, opener=self.os.open_listener)
        for spec in added:
            log.notice("listening on %s (%s model)" % (sock_name(self.listeners[spec]), self.cfg.model))

    def listener_fds(self):
        return [s.fileno() for s in self.listeners.values()]

    def run(self, ready=None):
        """Serve until stopped; returns the exit status.  ``ready`` (from
        daemonize) is told when the first workers are up, or why not."""
        if not self.listeners:
            self.bind()
        self.ready = ready
        self.signals = self.os.signals()
        self.channel = self.os.channel()
        self.alive_r, self.alive_w = self.os.pipe()
        self.status_r, self.status_w = self.os.pipe(nonblocking_read=True)
        self.os.set_title("sockd: master -f %s" % self.config_path)
        try:
            try:
                if self.fork_model:
                    self.probe_identity()
                else:
                    self.start_generation(wait=True)
            except Halt as exc:
                log.error("%s; stopping" % exc)
                if ready is not None:
                    ready.fail(str(exc))
                    ready = None
                self.exit_status = exc.status
                self.stop(signal.SIGINT)
            if ready is not None:
                ready.ok()
            self.ready = None
            load_services()
            if self.fork_model:
                # what exists now lives as long as the master: keep the
                # collector off it, so children do not copy it by collecting
                self.os.freeze_heap()
            self.serve()
        finally:
            for s in self.listeners.values():
                s.close()
            self.listeners = {}
            self.signals.close()
            self.channel.close()
            for fd in (self.alive_r, self.alive_w, self.status_r, self.status_w):
                self.os.close(fd)
        if self.stopping is not None and self.exit_status == 0:
            log.notice("stopped")
        return self.exit_status

    # --- starting workers
    def nworkers(self):
        return self.cfg.workers or self.os.cpu_count() or 1

    def start_generation(self, wait=False):
        """Start the workers of the current generation.  With ``wait``, wait
        until each has given up its privileges and started accepting: a
        worker that cannot start raises Halt."""
        n = self.nworkers()
        gen = self.generation
        for number in range(1, n + 1):
            self.spawn_worker(number)
        if wait:
            self.wait_status(lambda: all((gen, i) in self.booted for i in range(1, n + 1)), BOOT_WAIT,
                             "workers of generation %d to start" % gen, gen)

    def read_status(self):
        try:
            data = self.os.read(self.status_r, 65536)
        except (BlockingIOError, InterruptedError):
            return
        for line in data.split(b"\n"):
            f = line.split()
            try:
                if len(f) == 3 and f[0] == b"B":
                    self.booted.add((int(f[1]), int(f[2])))
                elif len(f) == 3 and f[0] == b"L":          # a child counted its client
                    pid, slot = int(f[1]), int(f[2])
                    if pid in self.workers:
                        self.limit_held[pid] = ("slot", slot)
                    elif pid in self.gone and self.limits is not None:
                        self.limits.release(slot)           # it died before we read this
                elif len(f) == 2 and f[0] == b"U":          # ... and released it
                    self.limit_held.pop(int(f[1]), None)
                elif len(f) == 2 and f[0] == b"R":
                    self.retired.add(int(f[1]))
            except ValueError:
                continue

    def wait_status(self, done, timeout, what, generation):
        """Wait (bounded) until ``done()``, reading the status pipe and
        reaping meanwhile.  A worker of ``generation`` that could not start
        raises Halt; other deaths are handled as usual (replacement)."""
        end = self.os.monotonic() + timeout
        poller = self.os.poller()
        poller.register(self.status_r, select.POLLIN)
        while not done():
            left = end - self.os.monotonic()
            if left <= 0:
                log.warning("still waiting for %s after %gs; going on" % (what, timeout))
                return
            if poller.poll(min(left, 0.1) * 1000):
                self.read_status()
            for pid, code in self.reap_codes():
                proc = self.workers.pop(pid, None)
                if proc is None:
                    continue
                if code == WORKER_BOOT_ERROR and proc.kind == "worker" and proc.generation == generation:
                    raise Halt("worker %d could not start (the reason is logged above)" % proc.number)
                if proc.kind == "worker":
                    self.on_worker_exit(pid, proc, code)
                    if self.stopping is not None:
                        raise Halt("workers keep dying as they start")
                elif code == WORKER_BOOT_ERROR and self.stopping is None:
                    self.halt("a child could not start (the reason is logged above); stopping")
                    raise Halt("children could not start")

    def forget_master_fds(self):
        """In a new worker or child: close what only the master uses."""
        self.signals.close()
        self.os.close(self.alive_w)
        self.os.close(self.status_r)
        if self.ready is not None and self.ready.fd >= 0:
            self.os.close(self.ready.fd)
            self.ready.fd = -1

    def proxy_trust(self):
        """Listener fd -> the balancers it takes PROXY protocol headers from."""
        lp = self.cfg.listen_proxy
        return {sock.fileno(): lp[spec] for spec, sock in self.listeners.items() if spec in lp}

    def spawn_worker(self, number):
        column = self.limits.take_column() if self.limits is not None else -1
        # Signals stay blocked across the fork until the child has its own
        # handlers: a SIGTERM sent to a worker that has just been born must
        # not land in the master's wakeup pipe and be lost.
        old = self.os.sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = self.os.fork()
        except OSError as exc:
            self.os.sigmask(signal.SIG_SETMASK, old)
            if column >= 0:
                self.limits.give_back(column)
            raise Halt("cannot start worker %d: %s" % (number, exc.strerror)) from None
        if pid == 0:
            try:
                self.forget_master_fds()
                for s in self.pending_drop:     # or the port would stay open in this worker
                    s.close()
                if self.limits is not None:
                    self.limits.column = column
                w = Worker(number, self.generation, self.cfg, list(self.listeners.values()), self.ident_mode,
                           old, self.identity, self.channel, self.alive_r, self.status_w,
                           self.proxy_trust(), self.limits)
            except BaseException:
                os._exit(WORKER_BOOT_ERROR)
            w.run()
        self.os.sigmask(signal.SIG_SETMASK, old)
        self.workers[pid] = Proc("worker", number, self.generation, self.os.monotonic())
        if column >= 0:
            self.limit_held[pid] = ("column", column)
        self.counts["workers started"] += 1
        return pid

    # --- the loop
    def serve(self):
        poller = self.os.poller()
        poller.register(self.signals.r, select.POLLIN)
        poller.register(self.status_r, select.POLLIN)
        polled = {}
        while not (self.stopping is not None and not self.workers):
            want = {}
            if self.fork_model and self.stopping is None:
                cap = self.cfg.limit_clients or 512
                if self.count("child") < cap:
                    want = {s.fileno(): s for s in self.listeners.values()}
            for fd in list(polled):
                if fd not in want or polled[fd] is not want[fd]:
                    try:
                        poller.unregister(fd)
                    except KeyError:
                        pass
                    del polled[fd]
            for fd, s in want.items():
                if fd not in polled:
                    poller.register(fd, select.POLLIN)
                    polled[fd] = s
            try:
                events = poller.poll(1000)
            except InterruptedError:
                events = ()
            for fd, ev in events:
                if fd == self.signals.r:
                    for sig in self.signals.read():
                        self.on_signal(sig)
                elif fd == self.status_r:
                    self.read_status()
                elif fd in polled and self.stopping is None and polled[fd] in self.listeners.values():
                    self.fork_clients(polled[fd])
            self.reap()
            if self.kill_at is not None and self.os.monotonic() >= self.kill_at and self.workers:
                log.error("%d process%s still running %gs after the stop; killing them" % (
                    len(self.workers), "" if len(self.workers) == 1 else "es", KILL_GRACE))
                self.kill_all(signal.SIGKILL)
                self.kill_at = None

    def count(self, kind, generation=None):
        return sum(1 for p in self.workers.values()
                   if p.kind == kind and (generation is None or p.generation == generation))

    def reap_codes(self):
        while True:
            got = self.os.reap()
            if got is None:
                return
            self.released(got[0])
            yield got

    def released(self, pid):
        """A worker or child has ended: what it counted in the limits goes."""
        if self.limits is None:
            return
        self.gone.append(pid)
        held = self.limit_held.pop(pid, None)
        if held is None:
            return
        kind, value = held
        if kind == "column":
            self.limits.give_back(value)
        else:
            self.limits.release(value)

    def reap(self):
        self.read_status()
        for pid, code in self.reap_codes():
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue
            if proc.kind == "worker":
                self.on_worker_exit(pid, proc, code)
            elif code == WORKER_BOOT_ERROR and self.stopping is None:
                self.halt("a child could not start (the reason is logged above); stopping")

    def on_worker_exit(self, pid, proc, code):
        if self.stopping is not None or proc.generation != self.generation or self.fork_model:
            return                      # stopping, or an older generation that has finished
        self.counts["workers died"] += 1
        if code == WORKER_BOOT_ERROR:
            self.halt("worker %d could not start (the reason is logged above); stopping" % proc.number)
            return
        log.error("worker %d (pid %d) exited with %s; starting another" % (proc.number, pid, exit_text(code)))
        now = self.os.monotonic()
        self.boot_failures = [t for t in self.boot_failures if now - t < 10] + (
            [now] if now - proc.started < 1.0 else [])
        if len(self.boot_failures) >= 5:
            self.halt("workers keep dying as they start; stopping")
            return
        try:
            self.spawn_worker(proc.number)
        except Halt as exc:
            self.halt(str(exc))

    def halt(self, why):
        log.error(why)
        self.exit_status = 1
        self.stop(signal.SIGTERM)

    def on_signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(sig)
        elif sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGUSR1:
            self.report()

    def stop(self, sig):
        if self.stopping == signal.SIGINT or self.stopping == sig:
            return
        self.stopping = sig
        if sig == signal.SIGTERM:
            live = len(self.workers)
            log.notice("stopping (SIGTERM): no new clients; live connections have up to %gs" %
                       self.cfg.timeout_shutdown if live else "stopping (SIGTERM)")
            grace = self.cfg.timeout_shutdown + KILL_GRACE
        else:
            log.notice("stopping now (SIGINT)")
            grace = KILL_GRACE
        if self.fork_model and sig == signal.SIGTERM:
            # clients already in the kernel's queue are served, not reset
            for lsock in list(self.listeners.values()):
                self.fork_clients(lsock, drain=True)
        for s in self.listeners.values():
            s.close()
        self.listeners = {}
        self.kill_all(sig)
        self.kill_at = self.os.monotonic() + grace

    def kill_all(self, sig, pids=None):
        for pid in list(self.workers if pids is None else pids):
            try:
                self.os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # --- SIGHUP
    def reload(self):
        """SIGHUP.  Nothing changes until the new configuration has been
        read, its new ports opened and its workers have started; on any
        failure the old configuration, ports and workers go on."""
        if self.stopping is not None:
            return
        path = self.config_path
        log.notice("reloading %s (SIGHUP)" % path)
        try:
            new = self.apply_overrides(C.load(path))
            identity = privileges.resolve(new)
            listeners, added, dropped = open_listeners(new, self.listeners, self.os.open_listener)
        except C.ConfigError as exc:
            for line in exc.lines():
                log.error(line)
            self.reload_failed("%d problem%s in %s" % (len(exc.problems), "" if len(exc.problems) == 1 else "s",
                                                       path))
            return
        except (Halt, PrivilegeError) as exc:
            self.reload_failed(str(exc))
            return
        old = (self.cfg, self.identity, self.listeners, self.generation)
        self.cfg, self.identity, self.listeners = new, identity, listeners
        # new limits for the new workers; counts are shared with the old ones
        self.limits = _MASTER_LIMITS[0] = make_limits(new, self.limits)
        self.pending_drop = dropped
        self.generations += 1
        self.generation = self.generations
        try:
            if identity.changes_anything:
                privileges.preload()
            # the new workers start beside the old ones, which go on
            # accepting meanwhile: there is no moment without a server
            if self.fork_model:
                self.probe_identity()
            else:
                self.start_generation(wait=True)
        except Halt as exc:
            failed = [pid for pid, p in self.workers.items() if p.generation == self.generation]
            self.kill_all(signal.SIGINT, failed)
            for spec in added:
                listeners[spec].close()
            self.cfg, self.identity, self.listeners, self.generation = old
            self.pending_drop = []
            self.reload_failed(str(exc))
            return
        self.pending_drop = []
        old_cfg = old[0]
        for s in dropped:
            log.notice("no longer listening on %s" % sock_name(s))
            s.close()
        for spec in added:
            log.notice("listening on %s (%s model)" % (sock_name(listeners[spec]), new.model))
        if (new.log_facility, new.log_socket) != (old_cfg.log_facility, old_cfg.log_socket):
            log.configure(facility=new.log_facility, socket_path=new.log_socket)
        for f, line, msg in new.warnings:
            log.warning("%s:%d: warning: %s" % (f, line, msg))
        if new.pidfile != old_cfg.pidfile:
            log.notice("pidfile: the new value takes effect at the next start")
        self.counts["reloads"] += 1
        if new.reload_recheck:
            self.channel.publish(self.generation, new, True)
        # the older processes stop accepting (workers) and re-check their
        # clients when asked; "reloaded" is logged once every older worker
        # has said it no longer accepts, so a client that connects after it
        # gets the new rules
        older = [pid for pid, p in self.workers.items() if p.generation < self.generation]
        self.retired.clear()
        self.kill_all(signal.SIGHUP, older)
        older_workers = [pid for pid in older if self.workers[pid].kind == "worker"]
        try:
            self.wait_status(lambda: all(pid in self.retired or pid not in self.workers for pid in older_workers),
                             BOOT_WAIT, "older workers to stop accepting", None)
        except Halt:
            return                      # on_worker_exit has begun the stop

        started = ""
        if not self.fork_model:
            cur = self.count("worker", self.generation)
            started = "; %d workers started, %d older ones finish their clients" % (
                cur, self.count("worker") - cur)
        log.notice("reloaded %s: %d rules, listening on %s%s%s" % (
            path, len(new.ruleset.rules), ", ".join(sock_name(s) for s in self.listeners.values()),
            started, "; live connections re-checked" if new.reload_recheck else ""))

    def reload_failed(self, why):
        self.counts["failed reloads"] += 1
        log.error("reload failed: %s; still running with the previous configuration" % why)

    # --- SIGUSR1
    def report(self):
        up = self.os.time() - self.started
        c = self.counts
        if self.fork_model:
            what = "%d children (limit %d); since start: %d clients, %d reloads (%d failed)" % (
                self.count("child"), self.cfg.limit_clients or 512, c["clients"], c["reloads"], c["failed reloads"])
        else:
            cur = self.count("worker", self.generation)
            what = "%d workers, %d finishing; since start: %d workers started, %d died, %d reloads (%d failed)" % (
                cur, self.count("worker") - cur, c["workers started"], c["workers died"], c["reloads"],
                c["failed reloads"])
        log.info("master (pid %d, %s model, generation %d, up %ds, %s: %d rules): %s" % (
            os.getpid(), self.cfg.model, self.generation, up, self.config_path, len(self.cfg.ruleset.rules), what))
        self.kill_all(signal.SIGUSR1)

    # --- the fork model
    def fork_clients(self, lsock, drain=False):
        cap = self.cfg.limit_clients or 512
        trusts = self.proxy_trust()
        for _ in range(1 << 16 if drain else 16):
            if self.count("child") >= cap:
                return
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("accept: %s" % exc.strerror)
                    self.os.sleep(0.1)
                return
            trust = trusts.get(lsock.fileno())
            refusal, slot = None, None
            if self.limits is not None and trust is None:
                from .limits import OK, REASONS
                verdict, slot, log_it = self.limits.admit(ip_key(peer[0]))
                if verdict != OK:
                    refusal, slot = (REASONS[verdict], log_it), None
            old = self.os.sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                pid = self.os.fork()
            except OSError as exc:
                self.os.sigmask(signal.SIG_SETMASK, old)
                log.error("cannot fork for a client: %s" % exc.strerror)
                sock.close()
                if slot is not None:
                    self.limits.release(slot)
                return
            if pid == 0:
                self.child(sock, old, trust, refusal, peer)
            self.os.sigmask(signal.SIG_SETMASK, old)
            sock.close()
            self.workers[pid] = Proc("child", peer, self.generation, self.os.monotonic())
            if slot is not None:
                self.limit_held[pid] = ("slot", slot)
            self.counts["clients"] += 1

    def child(self, sock, sigmask, trust=None, refusal=None, peer=None):
        """A fork-model child; never returns."""
        code = 0
        # a short life: no garbage collection passes (they would touch, and
        # so copy, the master's pages)
        gc.disable()
        try:
            self.forget_master_fds()
            # a child behind a balancer counts its real client itself and
            # tells the master, who releases the count if the child dies
            counting = trust is not None and self.limits is not None
            if not counting:
                os.close(self.status_w)
            reset_child_signals()
            for s in self.listeners.values():
                s.close()
            sigs = Signals()
            _sigmask(signal.SIG_SETMASK, sigmask)
            become(self.identity)
            OneClient(self.cfg, sock, self.ident_mode, self.generation, self.channel, self.alive_r,
                      inherited=True, proxy=trust, refusal=refusal, peer=peer,
                      status_fd=self.status_w if counting else -1).run(title=True, signals=sigs)
        except PrivilegeError as exc:
            log.error("child %d could not start: %s" % (os.getpid(), exc))
            code = WORKER_BOOT_ERROR
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    def probe_identity(self):
        """Fork model: try the privilege drop once at start, in a child,
        so that a bad one stops the start instead of every client."""
        ident = self.identity
        if ident is None or not ident.changes_anything:
            return
        pid = self.os.fork()
        if pid == 0:
            code = 0
            try:
                reset_child_signals()
                become(ident)
            except PrivilegeError as exc:
                log.error("a child could not start: %s" % exc)
                code = WORKER_BOOT_ERROR
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise Halt("children could not start (the reason is logged above)")


def become(ident):
    """In a worker or child: give up what ``ident`` says, having first
    loaded what a chroot would hide.  Raises PrivilegeError."""
    if ident is None or not ident.changes_anything:
        return
    privileges.preload()            # a no-op after the first time
    connect_log()
    privileges.enter(ident)


def exit_text(code):
    return "signal %d" % -code if code < 0 else "status %d" % code


# --- inetd mode ---------------------------------------------------------------------------------

def serve_inetd(cfg, ident_mode=None):
    """inetd mode: the client is on standard input."""
    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError as exc:
        raise Halt("--inetd: standard input is not a socket (%s)" % exc.strerror)
    # inetd hands the client on 0, 1 and 2 alike: none of them may keep the
    # connection open (or receive an error message) once the session is over
    try:
        st0, st2 = os.fstat(0), os.fstat(2)
        same2 = (st0.st_dev, st0.st_ino) == (st2.st_dev, st2.st_ino)
    except OSError:
        same2 = False
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2) if same2 else (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    if os.geteuid() == 0:
        try:
            become(privileges.resolve(cfg))
        except PrivilegeError as exc:
            sock.close()
            raise Halt(str(exc)) from None
    serve_one(cfg, sock, ident_mode)
    return 0


def stdin_is_socket():
    try:
        return stat.S_ISSOCK(os.fstat(0).st_mode)
    except OSError:
        return False
