"""The processes that serve clients: a threads-model worker, a process for
one client (a fork-model child, or sockd under inetd), and their base.

``Serving`` owns what each of them does the same way:

* signals are recorded on a wakeup fd of the process's own and acted on
  in its poll loop: SIGTERM stops gracefully (no new clients, the live
  ones have ``timeout shutdown``), SIGINT stops now, SIGUSR1 writes one
  report line, SIGHUP retires (a newer generation serves new clients) and
  re-checks the live connections when the master published the new
  configuration on the Channel for that;
* the master's going (the alive pipe reads end-of-file) stops it as
  SIGTERM does;
* with ``metrics`` on, what it has counted goes to the master on the
  status pipe (metrics.encode: "M pid key=value ..."), every REPORT_EVERY
  seconds when it has changed and once more at its end, so that the
  master's totals hold what a process counted after it has gone.

The subclasses add what differs: a worker accepts from the shared
listeners and says on the status pipe when it serves ("B") and when it
has retired ("R"); a one-client process serves the client it was handed.
Objects are built before they run (in the master, or in the child before
it has its signals); ``Worker.run`` and ``serve_child`` run after the fork
and leave with os._exit.

Runs in the serving process: must not import the master or the process
models, which import this.
"""

import _socket
import errno
import os
import signal
import socket
import stat
import time
import traceback

from . import metrics, privileges, recheck
from .channel import fetch_recheck
from .config import traffic_on
from .errors import Halt, PrivilegeError, WORKER_BOOT_ERROR
from .limits import accept_ceiling, nearly_out
from .listeners import members
from .log import log
from .loop import Loop, EPOLLIN, EPOLLEXCLUSIVE
from .meters import TrafficControl, TrafficTable
from .osfacade import setproctitle
from .pools import ThreadExecutor
from .session import Context, Session, live_counts
from .signals import Signals, sigmask
from .steering import cpu_of, plan


REPORT_EVERY = 1.0        # seconds between two reports of the counts to the master


class Serving:
    """The base of every process that serves clients.  A subclass sets
    ``loop`` and ``ctx`` (a session Context) before it calls ``watch()``,
    and may override the hooks: ``no_new_clients``, ``stop_now``,
    ``retire``, ``master_gone``, ``closing_late``, ``status_line``,
    ``who``."""

    def __init__(self, cfg, ident_mode=None, generation=0, channel=None, alive_fd=-1):
        self.cfg = cfg                   # what it starts with; ctx.config is the current one
        self.ident_mode = ident_mode
        self.generation = generation     # the configuration it was started for
        self.seen = generation           # the newest one it has applied (recheck)
        self.channel = channel
        self.alive_fd = alive_fd         # reads end-of-file once the master has gone
        self.signals = None
        self.stopping = False
        self.deadline_timer = None
        self.loop = None
        self.ctx = None
        self.report_fd = -1              # the status pipe, when the counts go to the master
        self.reported = None             # the lines of the last report

    # --- after the fork
    def take_signals(self, mask):
        """A signal pipe of its own, then the signals the master blocked
        across the fork let in again (those that came meanwhile are
        delivered now, into this pipe).  The recording handlers came with
        the fork; Signals() installs them again all the same."""
        self.signals = Signals()
        sigmask(signal.SIG_SETMASK, mask)

    def watch(self):
        """Act, in the loop, on the signal pipe (when this process has one)
        and on the master's going (when it has a master)."""
        if self.signals is not None:
            self.loop.add(self.signals.r, EPOLLIN, self.on_signal)
        if self.alive_fd >= 0:
            self.loop.add(self.alive_fd, EPOLLIN, self.on_master_gone)

    # --- what signals mean
    def on_signal(self, ev):
        for sig in self.signals.read():
            if sig == signal.SIGTERM:
                self.graceful_stop()
            elif sig == signal.SIGINT:
                self.stop_now()
            elif sig == signal.SIGUSR1:
                log.info(self.status_line())
            elif sig == signal.SIGHUP:
                self.retire()

    def on_master_gone(self, ev):
        self.loop.remove(self.alive_fd)
        self.master_gone()

    def master_gone(self):
        """Nobody supervises this process any more: stop as on SIGTERM."""
        self.graceful_stop()

    def graceful_stop(self):
        """SIGTERM: no new clients; the live ones have ``timeout shutdown``
        (of the current configuration), then they are closed."""
        if self.stopping:
            return
        self.stopping = True
        self.no_new_clients()
        if not self.ctx.sessions:
            self.loop.stop()
            return
        self.deadline_timer = self.loop.call_later(self.ctx.config.timeout_shutdown, self.shutdown_deadline)

    def shutdown_deadline(self):
        live = list(self.ctx.sessions)
        if live:
            self.closing_late(len(live))
        for s in live:
            s.close()
        self.loop.stop()

    def stop_now(self):
        """SIGINT: leave at once; the kernel closes what is open."""
        self.loop.stop()

    def retire(self):
        """SIGHUP from the master: a newer configuration serves new clients;
        the live ones are re-checked against it when it asks for that."""
        self.recheck()

    def recheck(self):
        got = fetch_recheck(self.channel, self.seen, self.who())
        if got is None:
            return
        self.seen, cfg = got
        self.ctx.config = cfg          # negotiations still under way decide with the new rules
        recheck.recheck(self.ctx.sessions, cfg, log)

    # --- the counts, to the master (metrics on)
    def start_reports(self, fd):
        """Report on ``fd`` from now on: every REPORT_EVERY seconds (when
        the counts have changed) and at the end (``report``)."""
        self.report_fd = fd
        self.loop.call_later(REPORT_EVERY, self.report_tick)

    def report_tick(self):
        self.report()
        self.loop.call_later(REPORT_EVERY, self.report_tick)

    def report(self):
        """Send the counts, unless they are those sent last.  Each line is
        shorter than PIPE_BUF: one write each, never interleaved with
        another process's."""
        if self.report_fd < 0 or self.ctx is None:
            return
        ctx = self.ctx
        lines = metrics.encode(os.getpid(), metrics.report(ctx.counts, ctx.stats, live_counts(ctx.sessions)))
        if lines == self.reported:
            return
        self.reported = lines
        for line in lines:
            try:
                os.write(self.report_fd, line)
            except OSError:
                return

    # --- hooks
    def no_new_clients(self):
        """On a graceful stop, before the live clients are counted."""

    def closing_late(self, n):
        """``n`` clients are still open at the shutdown deadline."""

    def status_line(self):
        raise NotImplementedError

    def who(self):
        raise NotImplementedError


# --- the threads model: one worker -------------------------------------------------------------

class Worker(Serving):
    """A pre-forked worker: accepts and serves clients from one poll loop.
    Built in the master; run() runs after the fork and never returns."""

    def __init__(self, number, generation, cfg, listeners, ident_mode, sigmask=(), identity=None,
                 channel=None, alive_fd=-1, status_fd=-1, proxy_trust=None, limits=None, backoff=None, health=None,
                 traffic=None, workers=1):
        super().__init__(cfg, ident_mode, generation, channel, alive_fd)
        self.proxy_trust = proxy_trust or {}    # listener fd -> trusted PROXY protocol sources
        self.limits = limits                    # shared Limits, this worker's column set
        self.backoff = backoff                  # the master's shared login back-off
        self.health = health                    # the master's shared marks on upstream proxies
        self.traffic = traffic                  # the master's shared meters.TrafficTable, or None
        self.number = number
        self.workers = workers                  # of its generation (affinity cpu's plan)
        self.listeners = listeners
        self.cpu = None                         # the CPU it is pinned to (affinity cpu)
        self.allowed = ()                       # the CPUs it was started with (the master's)
        self.polled = []                        # the sockets of its listeners it accepts from
        self.sigmask = sigmask
        self.identity = identity
        self.status_fd = status_fd
        self.accepting = False
        self.retiring = False
        self.paused_until = 0.0
        self.title_at = 0.0
        self.title_timer = None
        self.told_clients = 0                   # the clients the master last heard of ("C pid n")
        self.started = time.time()

    def run(self):
        """Boot, serve until stopped, leave with os._exit: WORKER_BOOT_ERROR
        when it could not start (the master stops then), 1 after a crash
        (logged with its traceback), 0 otherwise.  Never returns."""
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
            self.report()
        except BaseException as exc:            # a worker must never die silently
            log.error("worker %d: %s" % (self.number, describe_exc(exc)))
            status = 1
            for line in traceback.format_exc().splitlines():
                log.error(line)
        finally:
            try:
                self.loop.close()
            except BaseException:
                pass
            log.flush()
            os._exit(status)

    def boot(self):
        """Signals, privileges given up, the loop, the helper threads, the
        listeners; then "B generation number" to the master.  Raises what
        stops it from serving (PrivilegeError, OSError)."""
        self.take_signals(self.sigmask)
        become(self.identity)
        if self.cfg.affinity == "cpu" and self.cpu is None:
            self.pin()
        self.loop = loop = Loop()
        self.watch()
        cfg = self.cfg
        loop.executor = ThreadExecutor(loop, cfg.threads, cfg.helpers_passwords, cfg.helpers_per_address,
                                       cfg.helpers_queue)
        self.ctx = Context(self.cfg, loop, log, self.ident_mode)
        self.ctx.own_sockets = True     # its clients are accepted here (make_acceptor)
        self.ctx.backoff = self.backoff
        self.ctx.health = self.health
        if self.traffic is not None:
            self.ctx.traffic = TrafficControl(self.traffic)
        lim = self.limits
        if lim is not None:
            # clients are counted only when a client limit is set; pending
            # BINDs when limit binds is (its default)
            self.ctx.limits = lim if lim.clients_on else None
            self.ctx.bind_limits = lim if lim.binds else None
        self.ctx.on_close = self.on_session_closed
        if cfg.metrics is not None:
            self.start_reports(self.status_fd)
        self.start_accepting()
        self.set_title()
        self.tell_master(b"B %d %d\n" % (self.generation, self.number))
        # two lines for every client: their stderr copies go out once per turn of the loop
        log.batch_stderr()
        loop.idle_hooks.append(log.flush)

    def tell_master(self, line):
        """A line on the master's status pipe (atomic: shorter than
        PIPE_BUF): "B generation number" when serving, "R pid" when
        retired, "C pid clients" when its clients have changed."""
        if self.status_fd >= 0:
            try:
                os.write(self.status_fd, line)
            except OSError:
                pass

    def pin(self):
        """affinity cpu: run on the CPU steering.cpu_of gives this worker
        (before its helper threads start: they inherit it).  Unpinned, it
        accepts from every socket of its listeners."""
        try:
            self.allowed = os.sched_getaffinity(0)
            cpu = cpu_of(self.number, self.allowed)
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:
            log.warning("worker %d: affinity cpu: cannot pin: %s; accepting on every CPU's socket" % (
                self.number, exc.strerror))
            return
        self.cpu = cpu

    def accept_sockets(self):
        """The sockets it accepts from: of a listener's group (affinity
        cpu, steering.plan) its own CPU's and those that fall to it; of a
        plain listener, or when it is not pinned, every socket."""
        out = []
        for lsock in self.listeners:
            group = members(lsock)
            if self.cpu is not None and len(group) > 1:
                _, mine = plan(self.number, self.workers, self.allowed, len(group))
                group = [group[i] for i in mine]
            out += group
        return out

    def start_accepting(self):
        if self.accepting or self.stopping or self.retiring:
            return
        self.polled = self.accept_sockets()
        for s in self.polled:
            self.loop.add(s.fileno(), EPOLLIN | EPOLLEXCLUSIVE, self.make_acceptor(s))
        self.accepting = True
        self.ctx.budget.spare_again()   # after a pause for descriptors, by its timer or a closed session

    def stop_accepting(self):
        if not self.accepting:
            return
        for s in self.polled:
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
        # issue 17 (scale): near the open-files limit, pause as on EMFILE, so
        # that this client still gets a descriptor for its destination and
        # the other workers take the next ones
        ceiling = accept_ceiling()
        # socket.accept() without its wrapper: the wrapper converts the
        # listener's family and type to enums on every call (two enum
        # look-ups per client); the accepted socket is the same
        raw_accept = lsock._accept
        fam, typ, proto = int(lsock.family), int(lsock.type), lsock.proto
        # and the accepted socket is the C type itself, not socket.socket:
        # the wrapper's __init__, close and _real_close are Python frames
        # (three per client), and what it adds (makefile's reference count,
        # enum-valued family and type, the context manager) no user of a
        # session's sockets asks for: they send, recv, recv_into, shutdown,
        # getsockname, setblocking, fileno and close, which are the C type's
        new_socket = _socket.socket

        def on_accept(ev, most=32):
            for _ in range(most):
                try:
                    fd, peer = raw_accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.pause_accepting(exc)
                    break
                try:
                    sock = new_socket(fam, typ, proto, fd)
                except OSError:
                    os.close(fd)
                    continue
                try:
                    Session(ctx, sock, peer, fixed or sock.getsockname(), True, trust)
                except OSError:
                    sock.close()
                    continue
                if ceiling is not None and fd >= ceiling:
                    self.pause_accepting(nearly_out(fd))
                    break
            if self.title_timer is None:
                self.title_stale()
        return on_accept

    def pause_accepting(self, exc):
        """Out of descriptors: stop accepting for a moment instead of spinning;
        the relays' spare pipes are given back first."""
        self.ctx.budget.drop_pipes()
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
        n = len(self.ctx.sessions)
        setproctitle("sockd: worker %d (%d clients)%s" % (
            self.number, n, " stopping" if self.stopping else " finishing" if self.retiring else ""))
        # the master's count (systemd's STATUS=), as often as the title
        if n != self.told_clients:
            self.told_clients = n
            self.tell_master(b"C %d %d\n" % (os.getpid(), n))

    # --- the base's hooks
    def no_new_clients(self):
        if self.accepting:
            # clients already in the kernel's queue are served, not reset
            for lsock in self.polled:
                self.make_acceptor(lsock)(EPOLLIN, most=4096)
        self.close_listeners()
        self.set_title()

    def master_gone(self):
        log.error("worker %d: the master has gone; stopping" % self.number)
        self.graceful_stop()

    def closing_late(self, n):
        log.notice("worker %d: closing %d connection%s still open after %gs (timeout shutdown)" % (
            self.number, n, "" if n == 1 else "s", self.ctx.config.timeout_shutdown))

    def retire(self):
        """SIGHUP: stop accepting for good and finish the live clients
        (re-checked when asked), then say "R pid" to the master."""
        if not self.retiring and not self.stopping:
            self.retiring = True
            self.close_listeners()
            self.set_title()
        super().retire()
        self.tell_master(b"R %d\n" % os.getpid())
        if not self.ctx.sessions:
            self.loop.stop()

    def status_line(self):
        counts = dict(self.ctx.stats)
        counts.update(self.loop.executor.stats())     # helper jobs dropped and refused
        counts.update(self.ctx.resolver.stats())      # the resolver cache's hits, misses and names
        return "worker %d (pid %d, generation %d%s): %d clients; since start %ds ago: %s" % (
            self.number, os.getpid(), self.generation,
            ", stopping" if self.stopping else ", finishing" if self.retiring else "",
            len(self.ctx.sessions), time.time() - self.started,
            ", ".join("%s %d" % kv for kv in counts.items()))

    def who(self):
        return "worker %d" % self.number


# --- the fork model and inetd: one client per process -------------------------------------------

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


class OneClient(Serving):
    """A process that serves exactly one client: a fork-model child (with
    signals, a title, the master's channel) or an inetd-mode sockd."""

    def __init__(self, cfg, sock, ident_mode=None, generation=0, channel=None, alive_fd=-1,
                 inherited=False, proxy=None, refusal=None, peer=None, limits=None, backoff=None, health=None,
                 traffic=None, status_fd=-1):
        super().__init__(cfg, ident_mode, generation, channel, alive_fd)
        self.traffic = traffic          # the master's meters.TrafficTable (fork model), or None
        self.status_fd = status_fd      # fork model with metrics on: its counts go to the master
        self.peer = peer                # from the master's accept, when it has it
        self.limits = limits            # fork model behind a balancer: a ChildLimits
        self.backoff = backoff          # fork model: the master's shared login back-off
        self.health = health            # fork model: the master's shared marks on upstream proxies
        self.inherited = inherited      # accepted from one of our listeners: options set
        self.proxy = proxy              # PROXY protocol sources this listener trusts
        self.refusal = refusal          # over a limit (the master counted): refuse politely
        self.sock = sock
        self.session = None

    def run(self, title=False):
        """Serve until the client has gone; returns.  Signals are acted on
        only when take_signals() made this process a pipe for them (a
        fork-model child); inetd mode keeps the default dispositions."""
        loop = self.loop = Loop()
        ctx = self.ctx = Context(self.cfg, loop, log, self.ident_mode, bufsize=1 << 20)
        if self.limits is not None:
            ctx.limits = self.limits
        ctx.backoff = self.backoff
        ctx.health = self.health
        if self.traffic is not None:
            ctx.traffic = TrafficControl(self.traffic)
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
        self.watch()
        if self.status_fd >= 0:
            self.start_reports(self.status_fd)
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
        self.report()
        loop.close()

    # --- the base's hooks
    def stop_now(self):
        """SIGINT: close the client now (its log line says so)."""
        for s in list(self.ctx.sessions):
            s.close()

    def status_line(self):
        return "child (pid %d, generation %d): %s" % (os.getpid(), self.seen, self.session.status())

    def who(self):
        return "child %d" % os.getpid()


def serve_child(client, mask, identity):
    """A fork-model child, once the master's descriptors are closed: its
    signals, its privileges given up, the one client served.  Leaves with
    os._exit: WORKER_BOOT_ERROR when it cannot become ``identity`` (the
    master stops then), 1 on any other failure, 0 otherwise.  Never
    returns."""
    code = 0
    try:
        client.take_signals(mask)
        become(identity)
        client.run(title=True)
    except PrivilegeError as exc:
        log.error("child %d could not start: %s" % (os.getpid(), exc))
        code = WORKER_BOOT_ERROR
    except BaseException:
        code = 1
    finally:
        os._exit(code)


INETD_SLOTS = 64          # keys of the one client's own traffic table under inetd


def serve_one(cfg, sock, ident_mode=None, title=False):
    """Serve exactly one client on ``sock`` (inetd mode, tests); returns
    when it has gone.  Traffic control has no master to share with: the
    client's limits apply to it alone, and quotas cannot be kept."""
    traffic = None
    if traffic_on(cfg):
        traffic = TrafficTable(slots=INETD_SLOTS)
        if cfg.quota:
            log.warning("%s:%d: quota lines do nothing under inetd (no master keeps the counts)" % (
                cfg.path, cfg.line_of.get("quota", 0)))
    OneClient(cfg, sock, ident_mode, traffic=traffic).run(title=title)


# --- giving up privileges ---------------------------------------------------------------------

def become(ident):
    """In a worker or child: give up what ``ident`` says, having first
    loaded what a chroot would hide.  Raises PrivilegeError."""
    if ident is None or not ident.changes_anything:
        return
    privileges.preload()            # a no-op after the first time
    connect_log()
    privileges.enter(ident)


def connect_log():
    """Connect the syslog socket now (before a chroot hides its path)."""
    log.reopen()
    with log._lock:
        if log._sock is None:
            log._connect()


def describe_exc(exc):
    return str(exc) if isinstance(exc, (Halt, PrivilegeError)) else "%s: %s" % (
        type(exc).__name__, getattr(exc, "strerror", None) or exc)


# --- inetd mode ---------------------------------------------------------------------------------

def serve_inetd(cfg, ident_mode=None):
    """inetd mode: the client is on standard input.  Returns 0 once it has
    gone; raises Halt when standard input is not a socket or the
    configured user cannot be become."""
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
