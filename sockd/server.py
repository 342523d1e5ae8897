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

from . import privileges
from . import config as C
from .errors import Halt, PrivilegeError, WORKER_BOOT_ERROR
from .log import log
from .rules import ip_key
from .addresses import load_services
from .serving import ChildLimits, OneClient, Worker, become, serve_child
from .serving import serve_inetd, stdin_is_socket  # noqa: F401  (cli.py, until it imports serving)
from .listeners import open_listeners, sock_name
from .osfacade import OS
from .signals import HANDLED_SIGNALS, reset_child_signals

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
        self.limits = make_limits(self.cfg)
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
        self.limits = make_limits(new, self.limits)
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
            for s in self.listeners.values():
                s.close()
            client = OneClient(self.cfg, sock, self.ident_mode, self.generation, self.channel, self.alive_r,
                               inherited=True, proxy=trust, refusal=refusal, peer=peer,
                               limits=ChildLimits(self.limits, self.status_w) if counting else None)
        except BaseException:
            os._exit(1)
        serve_child(client, sigmask, self.identity)

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


def exit_text(code):
    return "signal %d" % -code if code < 0 else "status %d" % code
