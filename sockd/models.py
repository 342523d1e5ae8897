"""The process models: how the master turns its listening sockets into
processes that serve clients.

* ``ThreadsModel`` (the default) pre-forks ``workers`` Worker processes;
  each accepts from the shared listeners and serves many clients.  A
  worker that dies is replaced; one that cannot start, or workers that
  keep dying as they start, fail the generation.
* ``ForkModel`` is the classic stand-alone sockd: the master accepts and
  forks one child per client, up to ``limit clients`` (512 by default);
  at the cap the master stops polling the listeners and the kernel's
  backlog holds new clients.

A model object stands for one generation: one configuration, its
identity, its listeners and its shared client counts.  The master builds
one at start and one per reload (so a reload may change ``model``), before
any fork: it touches no process state until ``start()``.  The master drives
it through this interface, and never asks which model it runs:

    start()                 fork what the generation needs first; raises Halt
    ready()                 whether the generation serves (every worker said "B")
    waiting_for()           what ready() waits for, for the log
    booted(number)          worker ``number`` of this generation said "B"
    accepting()             {fd: listener} for the master to poll, or None
    process_request(lsock)  a polled listener is readable (socketserver's name)
    stopping(sig)           the master stops, before it closes the listeners
    exited(pid, proc, code) one of its processes has ended
    retire()                a newer generation took over, or this one was given up
    settled()               the first generation serves: before the main loop
    report()                its part of the master's SIGUSR1 line
    reloaded()              its part of the "reloaded" line
    limits_total(cfg)       (static) the total that the shared Limits counts
    limits_binds(cfg)       (static) the pending BINDs per address it counts
    kind, acks_retire       (class) its processes' name; whether they say "R pid"

The model calls the master (``self.master``) for what only the master has:
its OS facade, descriptors and proc table (``add``, ``live``, ``count``,
``counts``, ``forget``), the login back-off its processes share
(``backoff``), and its verdicts (``halt``, ``generation_failed``).
The child side of each fork is in serving.py.  Must not import the master.
"""

import errno
import gc
import os
import signal
import socket

from .errors import Halt, PrivilegeError, WORKER_BOOT_ERROR
from .limits import Limits, OK, REASONS
from .listeners import members
from .log import log
from .rules import ip_key
from .serving import ChildLimits, OneClient, Worker, become, serve_child
from .signals import HANDLED_SIGNALS, reset_child_signals

FORK_CAP = 512            # fork-model children at once when ``limit clients`` is not set
QUICK = 1.0               # a worker that dies sooner than this after its start ...
QUICK_WINDOW = 10.0       # ... five times within this many seconds: the generation fails
QUICK_DEATHS = 5


class Proc:
    """A process the master started: a worker, a fork-model child or the
    fork model's start-up probe."""

    __slots__ = ("model", "kind", "number", "generation", "started")

    def __init__(self, model, number, started, kind=None):
        self.model = model                # the generation's model, which handles its end
        self.kind = kind or model.kind    # "worker", "child" or "probe"
        self.number = number              # worker number, or the client's address
        self.generation = model.generation
        self.started = started            # monotonic


class Model:
    """What the process models share; see the module docstring."""

    name = kind = None
    acks_retire = False

    def __init__(self, master, generation, cfg, identity, listeners, limits):
        self.master = master
        self.os = master.os
        self.generation = generation
        self.cfg = cfg
        self.identity = identity
        self.listeners = listeners        # (host, port, n) -> socket, as the master keeps them
        self.limits = limits              # the shared Limits its processes count in, or None
        self.live = True                  # False once retired: its ends are no longer handled
        lp = cfg.listen_proxy
        # listener fd -> the balancers it takes PROXY protocol headers from
        # a key's first three items are its listen line's (listeners.open_listeners)
        # (every socket of a listener's group: listeners.members)
        self.trust = {m.fileno(): lp[spec[:3]] for spec, s in listeners.items() if spec[:3] in lp
                      for m in members(s)}

    @staticmethod
    def limits_total(cfg):
        return 0

    @staticmethod
    def limits_binds(cfg):
        return 0

    def start(self):
        pass

    def ready(self):
        return True

    def waiting_for(self):
        return "generation %d to start" % self.generation

    def booted(self, number):
        pass

    def accepting(self):
        return None

    def process_request(self, lsock, drain=False):
        pass

    def stopping(self, sig):
        pass

    def exited(self, pid, proc, code):
        pass

    def retire(self):
        self.live = False

    def settled(self):
        pass

    def report(self):
        raise NotImplementedError

    def reloaded(self):
        return ""


class ThreadsModel(Model):
    """Pre-forked workers that accept from the shared listeners."""

    name, kind = "threads", "worker"
    acks_retire = True

    def __init__(self, master, generation, cfg, identity, listeners, limits):
        super().__init__(master, generation, cfg, identity, listeners, limits)
        self.size = cfg.workers or self.os.cpu_count() or 1
        self.up = set()                   # worker numbers that said "B"
        self.quick_deaths = []            # monotonic times

    @staticmethod
    def limits_total(cfg):
        return cfg.limit_clients          # the workers count their clients in the Limits

    @staticmethod
    def limits_binds(cfg):
        # a worker holds many clients: each address's listening BINDs are
        # counted across workers (a fork-model child is one client, bounded
        # by limit clients and limit per-address)
        return cfg.limit_binds

    def start(self):
        for number in range(1, self.size + 1):
            self.spawn(number)

    def ready(self):
        return len(self.up) >= self.size

    def waiting_for(self):
        return "workers of generation %d to start" % self.generation

    def booted(self, number):
        self.up.add(number)

    def spawn(self, number):
        """Fork worker ``number``; returns its pid.  Raises Halt when the
        fork fails."""
        master, osys, limits = self.master, self.os, self.limits
        column = limits.take_column() if limits is not None else -1
        # Signals stay blocked across the fork until the child has its own
        # handlers: a SIGTERM sent to a worker that has just been born must
        # not land in the master's wakeup pipe and be lost.
        old = osys.sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = osys.fork()
        except OSError as exc:
            osys.sigmask(signal.SIG_SETMASK, old)
            if column >= 0:
                limits.give_back(column)
            raise Halt("cannot start worker %d: %s" % (number, exc.strerror)) from None
        if pid == 0:
            try:
                mine = list(self.listeners.values())
                master.forget(keep=mine)
                if limits is not None:
                    # this worker's copy counts in its column, with its own file's totals
                    limits.column = column
                    apply_limits(limits, self.cfg)
                w = Worker(number, self.generation, self.cfg, mine, master.ident_mode, old, self.identity,
                           master.channel, master.alive_r, master.status_w, self.trust, limits, master.backoff,
                           master.health, master.traffic, workers=self.size)
            except BaseException:
                os._exit(WORKER_BOOT_ERROR)
            w.run()
        osys.sigmask(signal.SIG_SETMASK, old)
        master.add(pid, Proc(self, number, osys.monotonic()), (limits, "column", column) if column >= 0 else None)
        master.counts["workers started"] += 1
        return pid

    def exited(self, pid, proc, code):
        """Replace a worker of a live generation; fail the generation when
        one could not start or they keep dying as they start."""
        master = self.master
        if master.stopping is not None or not self.live:
            return                      # stopping, or an older generation that has finished
        master.counts["workers died"] += 1
        if code == WORKER_BOOT_ERROR:
            master.generation_failed(self, "worker %d could not start (the reason is logged above)" % proc.number)
            return
        log.error("worker %d (pid %d) exited with %s; starting another" % (proc.number, pid, exit_text(code)))
        now = self.os.monotonic()
        self.quick_deaths = [t for t in self.quick_deaths if now - t < QUICK_WINDOW] + (
            [now] if now - proc.started < QUICK else [])
        if len(self.quick_deaths) >= QUICK_DEATHS:
            master.generation_failed(self, "workers keep dying as they start")
            return
        self.up.discard(proc.number)
        try:
            self.spawn(proc.number)
        except Halt as exc:
            master.generation_failed(self, str(exc))

    def counted(self):
        """(workers of this generation, older workers still finishing)."""
        master = self.master
        mine = master.count("worker", self.generation)
        older = sum(1 for p in master.procs.values() if p.kind == "worker" and p.generation < self.generation)
        return mine, older

    def report(self):
        c = self.master.counts
        mine, older = self.counted()
        return "%d workers, %d finishing; since start: %d workers started, %d died, %d reloads (%d failed)" % (
            mine, older, c["workers started"], c["workers died"], c["reloads"], c["failed reloads"])

    def reloaded(self):
        return "; %d workers started, %d older ones finish their clients" % self.counted()


class ForkModel(Model):
    """One child per client, forked by the master, up to a cap."""

    name, kind = "fork", "child"

    def __init__(self, master, generation, cfg, identity, listeners, limits):
        super().__init__(master, generation, cfg, identity, listeners, limits)
        self.cap = cfg.limit_clients or FORK_CAP
        # a listener opened for affinity cpu under the threads model, kept by
        # a reload into this one, is served whole: every socket of its group
        self.polled = {m.fileno(): m for s in listeners.values() for m in members(s)}
        # listener fd -> (family, type, proto): the master accepts bare
        # descriptors (no socket object, no getsockname, no Enum
        # conversions per client) and the child makes its socket of them
        self.kinds = {fd: (int(s.family), int(s.type), s.proto) for fd, s in self.polled.items()}
        # with a user, group or chroot to become, one child tries it first
        self.probed = identity is None or not identity.changes_anything

    def start(self):
        # the children's code run a few times here first, so that every
        # child inherits it quickened (rehearsal.py; once per master)
        self.os.rehearse()
        if not self.probed:
            self.spawn_probe()

    def ready(self):
        return self.probed

    def waiting_for(self):
        return "a child of generation %d to start" % self.generation

    def accepting(self):
        if self.probed and self.master.live["child"] < self.cap:
            return self.polled
        return None

    def process_request(self, lsock, drain=False):
        """Accept what ``lsock`` has (16 at a time, everything when
        draining) and fork a child for each, up to the cap.  The hot path of
        the fork model: per client, accept, fork, close and the signal mask
        twice, nothing more."""
        master, osys, limits = self.master, self.os, self.limits
        live, cap = master.live, self.cap
        lfd = lsock.fileno()
        trust = self.trust.get(lfd)
        kind = self.kinds[lfd]
        for _ in range(1 << 16 if drain else 16):
            if live["child"] >= cap:
                return
            try:
                fd, peer = lsock._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("accept: %s" % exc.strerror)
                    osys.sleep(0.1)
                return
            refusal, slot = None, None
            if limits is not None and trust is None and limits.clients_on:
                verdict, slot, log_it = limits.admit(ip_key(peer[0]))
                if verdict != OK:
                    refusal, slot = (REASONS[verdict], log_it), None
            old = osys.sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                pid = osys.fork()
            except OSError as exc:
                osys.sigmask(signal.SIG_SETMASK, old)
                log.error("cannot fork for a client: %s" % exc.strerror)
                osys.close(fd)
                if slot is not None:
                    limits.release(slot)
                return
            if pid == 0:
                self.child(fd, kind, old, trust, refusal, peer)
            osys.sigmask(signal.SIG_SETMASK, old)
            osys.close(fd)
            master.add(pid, Proc(self, peer, osys.monotonic()), (limits, "slot", slot) if slot is not None else None)
            master.counts["clients"] += 1

    def child(self, fd, kind, mask, trust, refusal, peer):
        """In the child: let go of what is the master's, then serve the
        client on ``fd`` (accepted from a listener of ``kind``: family,
        type, proto).  Never returns."""
        # a short life: no garbage collection passes (they would touch, and
        # so copy, the master's pages)
        gc.disable()
        try:
            # a child behind a balancer counts its real client itself and
            # tells the master, who releases the count if the child dies
            counting = trust is not None and self.limits is not None and self.limits.clients_on
            # with metrics on, its counts go to the master when it ends
            reports = self.cfg.metrics is not None
            master = self.master
            master.forget(close_status=not (counting or reports))
            sock = socket.socket(*kind, fileno=fd)
            client = OneClient(self.cfg, sock, master.ident_mode, self.generation, master.channel, master.alive_r,
                               inherited=True, proxy=trust, refusal=refusal, peer=peer,
                               limits=ChildLimits(self.limits, master.status_w) if counting else None,
                               backoff=master.backoff, health=master.health, traffic=master.traffic,
                               status_fd=master.status_w if reports else -1)
        except BaseException:
            os._exit(1)
        serve_child(client, mask, self.identity)

    def spawn_probe(self):
        """Try the privilege drop once, in a child, so that a bad one fails
        the generation instead of every client.  Raises Halt when the fork
        fails."""
        osys = self.os
        old = osys.sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = osys.fork()
        except OSError as exc:
            osys.sigmask(signal.SIG_SETMASK, old)
            raise Halt("cannot start a child: %s" % exc.strerror) from None
        if pid == 0:
            code = 0
            try:
                self.master.forget()
                reset_child_signals()
                # it reports nothing and retires from nothing; a stop ends it
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                osys.sigmask(signal.SIG_SETMASK, old)
                become(self.identity)
            except PrivilegeError as exc:
                log.error("a child could not start: %s" % exc)
                code = WORKER_BOOT_ERROR
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        osys.sigmask(signal.SIG_SETMASK, old)
        self.master.add(pid, Proc(self, "probe", osys.monotonic(), kind="probe"))

    def exited(self, pid, proc, code):
        master = self.master
        if proc.kind == "probe":
            if code == 0:
                self.probed = True
            elif master.stopping is None:
                master.generation_failed(self, "children could not start (the reason is logged above)")
        elif code == WORKER_BOOT_ERROR and master.stopping is None:
            master.halt("a child could not start (the reason is logged above); stopping")

    def stopping(self, sig):
        if sig == signal.SIGTERM and self.probed:
            # clients already in the kernel's queue are served, not reset
            for lsock in list(self.polled.values()):
                self.process_request(lsock, drain=True)

    def settled(self):
        # what exists now lives as long as the master: keep the collector
        # off it, so children do not copy it by collecting
        self.os.freeze_heap()

    def report(self):
        c = self.master.counts
        return "%d children (limit %d); since start: %d clients, %d reloads (%d failed)" % (
            self.master.live["child"], self.cap, c["clients"], c["reloads"], c["failed reloads"])


MODELS = {ThreadsModel.name: ThreadsModel, ForkModel.name: ForkModel}


def make_limits(cfg, current=None):
    """The shared client counts for a generation of ``cfg``: None when it
    sets no limit (then they cost nothing at all), else ``current`` (the
    counts go on across a reload) or a new Limits.  Changes nothing in
    ``current``: see apply_limits."""
    model = MODELS[cfg.model]
    total, binds = model.limits_total(cfg), model.limits_binds(cfg)
    if not (total or cfg.limit_per_address or cfg.limit_rate or binds):
        return None
    if current is not None:
        return current
    return Limits(total, cfg.limit_per_address, cfg.limit_rate, binds=binds)


def apply_limits(limits, cfg):
    """This process's copy of ``limits`` judges by the totals of ``cfg``
    (the counts themselves are shared by every process)."""
    model = MODELS[cfg.model]
    limits.total = model.limits_total(cfg)
    limits.per_address, limits.rate = cfg.limit_per_address, cfg.limit_rate
    limits.binds = model.limits_binds(cfg)


def exit_text(code):
    return "signal %d" % -code if code < 0 else "status %d" % code
