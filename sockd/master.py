"""The master: it owns the listening sockets, starts the processes that
serve clients through the process model of its configuration, supervises
them, and never reads client data.

Its one main loop (``step()``, one pass) polls the signal pipe, the status
pipe on which its processes report, and, when the model asks for it, the
listeners; then it reaps, then it moves its phase on:

* STARTING: the first generation is starting; ``ready`` (from daemonize)
  is told "ok" once it serves, or why it could not.
* SERVING.
* BOOTING (a reload): the new configuration has been read, its new ports
  opened and its new generation started beside the old one, which goes on
  serving.  Once the new one serves (or after BOOT_WAIT), the reload is
  committed: the dropped ports close, the new configuration becomes the
  current one, and every older process is sent SIGHUP.  A failure before
  that leaves the old configuration, ports and processes as they were.
* RETIRING (a reload): waiting for the older workers to say "R pid"
  (they no longer accept); then "reloaded" is logged, so that a client
  that connects after that line gets the new rules.

A reload under way is a ``Reload`` object, which holds what it has read,
opened and started until it is committed or given up.

Signals are acted on in every phase: SIGTERM and SIGINT stop at once
(a reload under way is given up: the listeners only it opened close, its
processes are stopped with the rest), SIGUSR1 reports, and a SIGHUP that
comes while the master is still starting or reloading is acted on after
that.  Once stopping, the master waits for its processes, and kills them
KILL_GRACE seconds after ``timeout shutdown``.

systemd hears of the phases (sdnotify.py): READY=1 when the first
generation serves, RELOADING=1 when a reload begins and READY=1 when it is
committed or has failed, STOPPING=1; the loop sends STATUS= and the
watchdog's pings.  Sockets systemd passed (activation.py) are held from
bind() to the end, whatever a reload reads.

With ``metrics`` on, the master serves the metrics endpoint (exporter.py)
from this same loop, and keeps the totals (metrics.Totals) of what its
processes report on the status pipe ("M pid ..."): they outlive every
worker, child and reload.

Every system call goes through ``self.os`` (osfacade.OS, or a test's fake).
Must not be imported by the models or the serving processes.
"""

import collections
import signal
from select import POLLIN

from . import privileges
from .accounting import Accountant, StoreError
from .addresses import load_services
from .backoff import Backoff
from .config import traffic_on
from .configload import load as load_config
from .errors import ConfigError, EXIT_ERROR, Halt, PrivilegeError, report_config_error
from .exporter import Endpoint
from .health import Health
from .listeners import (affinity_warnings, inherited_of, inherited_warnings, listening_line, members,
                        open_listeners, opener_for, sock_name)
from .limits import descriptors_short, descriptors_wanted, raise_descriptors
from .log import log
from .meters import TrafficControl, TrafficTable
from .metrics import Totals, decode, families, render
from .models import MODELS, apply_limits, make_limits
from .osfacade import OS
from .sdnotify import Notifier, status_line
from .traffic import period_text, quotas_of_key
from .validators import listen_text

BOOT_WAIT = 10.0          # seconds a new generation (and the retirement of the old) may take
KILL_GRACE = 5.0          # after timeout shutdown, before SIGKILL

STARTING, SERVING, BOOTING, RETIRING = "starting", "serving", "booting", "retiring"
QUOTA_SERIES = 500          # keys under a quota that the metrics show, the most used
STATUS_PIPE_SIZE = 1 << 20   # bytes the status pipe holds: the processes' reports never wait for the master


class Reload:
    """SIGHUP: a reload under way, and the state of the master's main loop
    while it lasts.

    BOOTING: its file has been read, the ports it adds opened and its
    generation started beside the current one, which goes on serving;
    nothing of the master has changed.  ``commit()``, once the new
    generation serves (or after BOOT_WAIT), makes it the current one: the
    dropped ports close and every older process is sent SIGHUP.
    RETIRING: until every older worker has said "R pid" (or BOOT_WAIT);
    then ``finish()`` logs "reloaded".  ``give_up()`` ends it at any point:
    before the commit nothing is left of it, after it nothing is undone.
    """

    def __init__(self, master, cfg, identity, listeners, added, dropped, model, exporter=None):
        self.master = master
        self.exporter = exporter          # the metrics endpoint of the new file (maybe the current one)
        self.cfg, self.identity, self.model = cfg, identity, model
        self.listeners = listeners        # every listener of the new file, kept ones included
        self.added = added                # the keys of those it opened
        self.dropped = dropped            # the old sockets the new file no longer wants
        self.older = ()                   # once committed: the older workers that must say "R"
        self.phase = BOOTING
        self.until = master.os.monotonic() + BOOT_WAIT

    @classmethod
    def begin(cls, master):
        """Read the configuration again, open the ports it adds and start
        its generation.  Returns the Reload, or None when that failed
        (logged; the master is as it was)."""
        path = master.config_path
        log.notice("reloading %s (SIGHUP)" % path)
        master.notify.reloading(int(master.os.monotonic() * 1e6), "reloading %s" % path, master.os.monotonic())
        try:
            new = master.apply_overrides(load_config(path, keep=True))
            identity = privileges.resolve(new)
            exporter = master.exporter_for(new.metrics)
            try:
                listeners, added, dropped = open_listeners(new, master.listeners, master.opener(new),
                                                           master.inherited)
            except BaseException:
                if exporter is not None and exporter is not master.exporter:
                    master.close_exporter(exporter)
                raise
        except ConfigError as exc:
            report_config_error(exc, log.error)
            master.reload_failed("%d problem%s in %s" % (len(exc.problems), "" if len(exc.problems) == 1 else "s",
                                                         path))
            return None
        except (Halt, PrivilegeError) as exc:
            master.reload_failed(str(exc))
            return None
        new.ruleset.prepare()        # the index, before its processes fork: they inherit it
        try:
            # before any of its processes forks: they must see the table and
            # know which count is which period
            master.prepare_traffic(new)
        except Halt as exc:
            for spec in added:
                listeners[spec].close()
            master.reload_failed(str(exc))
            return None
        more_descriptors(master.cfg, new)
        master.generations += 1
        model = MODELS[new.model](master, master.generations, new, identity, listeners,
                                  make_limits(new, master.limits))
        r = cls(master, new, identity, listeners, added, dropped, model, exporter)
        try:
            if identity.changes_anything:
                privileges.preload()
            # the new processes start beside the old ones, which go on
            # serving meanwhile: there is no moment without a server
            model.start()
        except Halt as exc:
            r.give_up(signal.SIGINT)
            master.reload_failed(str(exc))
            return None
        return r

    def opened(self):
        """The listeners only this reload holds (before its commit)."""
        return [self.listeners[spec] for spec in self.added] if self.phase is BOOTING else []

    def advance(self, now):
        """Move on as far as it can now; True once it is over."""
        if self.phase is BOOTING and (self.model.ready() or late(now, self.until, self.model.waiting_for())):
            self.commit()
        if self.phase is RETIRING and (self.all_retired() or late(now, self.until, "older workers to stop accepting")):
            self.finish()
            return True
        return False

    def give_up(self, sig=None):
        """Before the commit: its processes are sent ``sig`` (when given)
        and their ends no longer handled, and the listeners only it opened
        are closed.  After it: nothing."""
        if self.phase is not BOOTING:
            return
        self.model.retire()
        if sig is not None:
            m = self.master
            m.kill_all(sig, [pid for pid, p in m.procs.items() if p.model is self.model])
        for s in self.opened():
            s.close()
        if self.exporter is not None and self.exporter is not self.master.exporter:
            self.master.close_exporter(self.exporter)
        self.exporter = None
        self.phase = None

    def commit(self):
        """The new generation serves: it becomes the current one, the
        dropped ports close, the older processes are told to retire."""
        m = self.master
        new, old_cfg, old_model = self.cfg, m.cfg, m.model
        m.cfg, m.identity, m.listeners, m.model = new, self.identity, self.listeners, self.model
        m.generation = self.model.generation
        m.limits = self.model.limits
        if m.limits is not None:
            apply_limits(m.limits, new)        # the master's own admissions (fork model) from now on
        old_model.retire()
        self.phase, self.until = RETIRING, m.os.monotonic() + BOOT_WAIT
        for s in self.dropped:
            log.notice("no longer listening on %s" % sock_name(s))
            s.close()
        for spec in self.added:
            log.notice(listening_line(self.listeners[spec], new))
        for msg in affinity_warnings(new, self.listeners):
            log.warning(msg)
        m.use_exporter(self.exporter, new.metrics)
        if (new.log_facility, new.log_socket) != (old_cfg.log_facility, old_cfg.log_socket):
            log.configure(facility=new.log_facility, socket_path=new.log_socket)
        for f, line, msg in new.warnings + inherited_warnings(new, self.listeners, m.inherited):
            log.warning("%s:%d: warning: %s" % (f, line, msg))
        if new.pidfile != old_cfg.pidfile:
            log.notice("pidfile: the new value takes effect at the next start")
        if m.accountant is not None:
            try:
                m.accountant.use(new)
            except StoreError as exc:
                log.error("traffic: %s; the counts go on in the previous database" % exc)
        m.counts["reloads"] += 1
        if new.reload_recheck:
            m.channel.publish(m.generation, new, True)
        # the older processes stop accepting (workers) and re-check their
        # clients when asked; "reloaded" is logged once every older worker
        # has said it no longer accepts, so a client that connects after it
        # gets the new rules
        older = [pid for pid, p in m.procs.items() if p.generation < m.generation]
        m.retired.clear()
        m.kill_all(signal.SIGHUP, older)
        self.older = [pid for pid in older if m.procs[pid].model.acks_retire]
        # systemd's reload is over once the new generation serves
        m.notify.ready(m.status_text(), m.os.monotonic())

    def all_retired(self):
        m = self.master
        return all(pid in m.retired or pid not in m.procs for pid in self.older)

    def finish(self):
        m, new = self.master, self.cfg
        self.phase = None
        log.notice("reloaded %s: %d rules, listening on %s%s%s" % (
            m.config_path, len(new.ruleset.rules), ", ".join(sock_name(s) for s in m.listeners.values()),
            m.model.reloaded(), "; live connections re-checked" if new.reload_recheck else ""))


def more_descriptors(old, new):
    """A reload whose file wants more open files than the running one:
    raise the limit before its processes fork (they inherit it), and say
    so when it stays below what the file wants (limit descriptors)."""
    wanted = descriptors_wanted(new)
    if wanted <= descriptors_wanted(old):
        return
    short = descriptors_short(raise_descriptors(wanted)[0], wanted)
    if short:
        log.warning(short)


def late(now, until, what):
    """Whether a phase has waited for ``what`` until ``until``: then say so."""
    if now < until:
        return False
    log.warning("still waiting for %s after %gs; going on" % (what, BOOT_WAIT))
    return True


class Master:
    """The supervisor.  Built before daemonizing (bind() then reports a
    taken port to the shell); run() serves until stopped.  It knows its
    processes only as models.Proc entries that their model handles, and
    its process model only through the interface in models.py."""

    def __init__(self, cfg, ident_mode=None, config_path=None, overrides=None, osys=None):
        self.os = osys or OS()
        self.overrides = dict(overrides or {})
        self.cfg = self.apply_overrides(cfg)
        self.ident_mode = ident_mode
        self.config_path = config_path or cfg.path
        self.listeners = {}        # (host, port, n) as written -> socket (listeners.open_listeners)
        self.inherited = ()        # activation.Inherited: the sockets systemd passed, served until the end
        self.notify = Notifier()   # sdnotify: what systemd hears (off until open())
        self.clients = {}          # worker pid -> its clients, as it last said ("C pid n")
        self.procs = {}            # pid -> models.Proc
        self.live = {"worker": 0, "child": 0, "probe": 0}   # procs of each kind
        self.model = None          # the current generation's process model
        self.generation = 1        # the configuration new clients get
        self.generations = 1       # generations numbered so far
        self.starting = True       # until the first generation serves
        self.start_until = None    # when the start stops waiting for it (monotonic)
        self.reload = None         # the Reload under way
        self.hup_pending = False   # a SIGHUP to act on once the start or the reload is over
        self.stopping = None       # None, or the signal that stops us
        self.kill_at = None
        self.exit_status = 0
        self.signals = None
        self.channel = None
        self.ready = None
        self.poller = None
        self.polled = {}           # fd -> listener registered with the poller
        self.polled_from = None    # the model's dict they came from
        self.alive_r = self.alive_w = -1
        self.status_r = self.status_w = -1
        self.status_rest = b""     # the start of a status line whose end has not been read yet
        self.exporter = None       # the metrics endpoint (exporter.Endpoint), with metrics on
        # every endpoint open, the current one and one a reload is booting
        # with: a process forked meanwhile must close them all (forget)
        self.endpoints = []
        self.totals = Totals()     # what every process has reported, kept across deaths and reloads
        self.ending = ()           # pids reaped in this pass, whose last reports are still read
        self.retired = set()       # pids that reported retiring since the last reload
        self.started = self.os.time()
        self.counts = {"workers started": 0, "workers died": 0, "clients": 0, "reloads": 0,
                       "failed reloads": 0}
        self.limits = make_limits(self.cfg)
        # failed logins per address, for every process of every generation:
        # made before any fork, kept across reloads (a SIGHUP forgives nobody)
        self.backoff = Backoff()
        # upstream proxies marked down, likewise for every process: one line
        # when one goes down, one when it is back, for the whole server
        self.health = Health()
        self.gone = collections.deque(maxlen=1024)   # pids reaped lately (limits bookkeeping)
        # traffic control: the shared table (made before any fork, kept
        # across reloads) and the accountant that writes it to the database
        self.traffic = TrafficTable() if traffic_on(self.cfg) else None
        self.accountant = None
        self.limit_held = {}       # pid -> (Limits, "column", n) for a worker, (Limits, "slot", n) for a child
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

    def bind(self):
        """Open the listening sockets (before detaching: a port that is
        taken is reported to whoever started us).  Raises Halt."""
        self.inherited = self.os.inherited_sockets()
        self.listeners, added, _ = open_listeners(self.cfg, opener=self.opener(self.cfg), inherited=self.inherited)
        for spec in added:
            log.notice(listening_line(self.listeners[spec], self.cfg))
        for spec, i in inherited_of(self.listeners, self.inherited).items():
            log.notice("listening on %s (%s model, %s)" % (sock_name(i.sock), self.cfg.model, i.describe()))
        for f, line, msg in inherited_warnings(self.cfg, self.listeners, self.inherited):
            log.warning("%s:%d: warning: %s" % (f, line, msg))
        for msg in affinity_warnings(self.cfg, self.listeners):
            log.warning(msg)
        try:
            self.exporter = self.exporter_for(self.cfg.metrics)
        except Halt:
            for s in self.listeners.values():
                s.close()
            self.listeners = {}
            raise

    def opener(self, cfg):
        """How ``cfg``'s new listeners are opened (listeners.opener_for)."""
        return opener_for(cfg, self.os.open_listener, self.os.cpu_count())

    def listener_fds(self):
        return [m.fileno() for s in self.listeners.values() for m in members(s)]

    # --- the main loop
    def run(self, ready=None):
        """Serve until stopped; returns the exit status.  ``ready`` (from
        daemonize) is told when the first generation serves, or why not."""
        self.open(ready)
        try:
            self.start()
            while not self.finished():
                self.step()
        finally:
            self.close()
        if self.stopping is not None and self.exit_status == 0:
            log.notice("stopped")
        return self.exit_status

    def open(self, ready=None):
        """The listeners (when bind() has not opened them), the pipes, the
        poller.  Raises Halt (a port) or OSError."""
        if not self.listeners:
            self.bind()
        self.ready = ready
        osys = self.os
        self.signals = osys.signals()
        self.channel = osys.channel()
        self.alive_r, self.alive_w = osys.pipe()
        self.status_r, self.status_w = osys.pipe(nonblocking_read=True, size=STATUS_PIPE_SIZE)
        osys.set_title("sockd: master -f %s" % self.config_path)
        self.poller = osys.poller()
        self.poller.register(self.signals.r, POLLIN)
        self.poller.register(self.status_r, POLLIN)
        if self.exporter is not None:
            self.exporter.attach(self.poller)
            self.exporter_serving(self.exporter, self.cfg.metrics)
        self.notify = osys.notifier()
        self.notify.start(osys.monotonic())

    def start(self):
        """Start the first generation: the STARTING phase."""
        self.model = MODELS[self.cfg.model](self, self.generation, self.cfg, self.identity, self.listeners,
                                            self.limits)
        self.starting, self.start_until = True, self.os.monotonic() + BOOT_WAIT
        self.cfg.ruleset.prepare()     # the index, before the processes fork: they inherit it
        try:
            self.prepare_traffic(self.cfg)
            self.model.start()
        except Halt as exc:
            self.start_failed(str(exc), exc.status)
        self.advance()

    def prepare_traffic(self, cfg):
        """Before a generation of ``cfg`` forks: the traffic table when it
        asks for traffic control (made once, the first time), the
        accountant and its database, the period indexes written into
        ``cfg``.  Raises Halt when the database cannot be opened."""
        if self.traffic is None:
            if not traffic_on(cfg):
                return
            self.traffic = TrafficTable()
        try:
            if self.accountant is None:
                self.accountant = Accountant(self.traffic, self.os.time, self.os.monotonic)
            self.accountant.prepare(cfg)
        except StoreError as exc:
            raise Halt("traffic: accounting database %s" % exc) from None

    def finished(self):
        return self.stopping is not None and not self.procs

    def step(self):
        """One pass of the main loop: wait for a signal, a status line, a
        client (when the model polls the listeners) or the phase's next
        deadline, a second at most; act on what came; reap; move the phase
        on.  Blocks only in poll."""
        self.poll_listeners()
        try:
            events = self.poller.poll(self.timeout() * 1000)
        except InterruptedError:
            events = ()
        for fd, ev in events:
            if fd == self.signals.r:
                for sig in self.signals.read():
                    self.on_signal(sig)
            elif fd == self.status_r:
                self.read_status()
            elif self.exporter is not None and self.exporter.owns(fd):
                self.exporter.on_event(fd, ev)
            else:
                lsock = self.polled.get(fd)
                # still open (a reload or a stop in this pass may have closed it)
                if lsock is not None and self.stopping is None and lsock.fileno() == fd:
                    self.model.process_request(lsock)
        self.reap()
        self.advance()
        now = self.os.monotonic()
        if self.exporter is not None:
            self.exporter.tick(now)
        self.notify.tick(now, self.status_text)
        if self.accountant is not None:
            self.accountant.tick()

    def poll_listeners(self):
        """Poll the listeners the current model asks for, and only those."""
        want = self.model.accepting() if self.stopping is None and not self.starting else None
        if want is self.polled_from:
            return
        want = want or {}
        polled = self.polled
        for fd in list(polled):
            if polled[fd] is not want.get(fd):
                try:
                    self.poller.unregister(fd)
                except KeyError:
                    pass
                del polled[fd]
        for fd, s in want.items():
            if fd not in polled:
                self.poller.register(fd, POLLIN)
                polled[fd] = s
        self.polled_from = want or None

    def timeout(self):
        """Seconds until the next deadline, one at most."""
        if self.stopping is not None:
            deadline = self.kill_at
        elif self.starting:
            deadline = self.start_until
        else:
            deadline = self.reload.until if self.reload is not None else None
        now = self.os.monotonic()
        ping = self.notify.wait(now)
        if ping is not None and (deadline is None or now + ping < deadline):
            deadline = now + ping
        if deadline is None:
            return 1.0
        return min(1.0, max(0.0, deadline - now))

    def advance(self):
        """Move the phase on as far as it can go now."""
        now = self.os.monotonic()
        if self.stopping is not None:
            if self.kill_at is not None and now >= self.kill_at and self.procs:
                log.error("%d process%s still running %gs after the stop; killing them" % (
                    len(self.procs), "" if len(self.procs) == 1 else "es", KILL_GRACE))
                self.kill_all(signal.SIGKILL)
                self.kill_at = None
            return
        if self.starting and (self.model.ready() or late(now, self.start_until, self.model.waiting_for())):
            self.serving()
        if self.reload is not None and self.reload.advance(now):
            self.reload = None
        if self.hup_pending and not self.starting and self.reload is None and self.stopping is None:
            self.hup_pending = False
            self.reload = Reload.begin(self)
            self.advance()

    @property
    def phase(self):
        """Where the main loop is: STARTING, SERVING, or the reload's
        BOOTING or RETIRING."""
        if self.reload is not None:
            return self.reload.phase
        return STARTING if self.starting else SERVING

    def serving(self):
        """The first generation serves."""
        self.starting = False
        if self.ready is not None:
            self.ready.ok()
            self.ready = None
        self.notify.ready(self.status_text(), self.os.monotonic())
        load_services()
        self.model.settled()

    def close(self):
        for s in self.held_listeners():
            s.close()
        self.listeners = {}
        for ex in list(self.endpoints):
            self.close_exporter(ex)
        self.exporter = None
        self.reload = None
        if self.accountant is not None:
            self.accountant.close()       # the last counts, once every process has ended
        if self.signals is not None:
            self.signals.close()
        if self.channel is not None:
            self.channel.close()
        for fd in (self.alive_r, self.alive_w, self.status_r, self.status_w):
            if fd >= 0:
                self.os.close(fd)

    def held_listeners(self):
        """Every listener the master holds: the current ones and those a
        reload under way has opened."""
        out = list(self.listeners.values())
        if self.reload is not None:
            out += self.reload.opened()
        return out

    # --- the processes
    def add(self, pid, proc, held=None):
        """A process a model has started; ``held``: what it counts in the
        limits, released when it ends."""
        self.procs[pid] = proc
        self.live[proc.kind] += 1
        if held is not None:
            self.limit_held[pid] = held

    def count(self, kind, generation=None):
        if generation is None:
            return self.live[kind]
        return sum(1 for p in self.procs.values() if p.kind == kind and p.generation == generation)

    def forget(self, keep=(), close_status=False):
        """In a new process, after the fork: close what only the master
        uses (its signal pipe, its ends of the alive and status pipes,
        daemonize's start-up pipe) and every listener it holds but
        ``keep``; the status pipe too with ``close_status``."""
        osys = self.os
        self.signals.close()
        osys.close(self.alive_w)
        osys.close(self.status_r)
        if close_status:
            osys.close(self.status_w)
        if self.ready is not None and self.ready.fd >= 0:
            osys.close(self.ready.fd)
            self.ready.fd = -1
        for s in self.held_listeners():
            if s not in keep:
                s.close()
        for ex in self.endpoints:
            ex.forget()

    # --- the metrics endpoint
    def close_exporter(self, ex):
        ex.close()
        if ex in self.endpoints:
            self.endpoints.remove(ex)

    def exporter_for(self, spec):
        """The endpoint for ``spec`` (validators.MetricsSpec): None when it
        is None, the current one when that listens on the same address
        (``use_exporter`` gives it the new access list), else a new one,
        not yet polled.  Raises Halt when its port cannot be opened."""
        if spec is None:
            return None
        cur = self.exporter
        if cur is not None and cur.address == spec.address:
            return cur
        try:
            sock = self.os.open_listener(spec.host, spec.port)
        except (OSError, UnicodeError) as exc:
            raise Halt("cannot listen on %s for metrics: %s" % (listen_text(spec.address),
                                                                getattr(exc, "strerror", None) or exc))
        ex = Endpoint(spec.address, sock, spec.allowed, self.metrics_text, self.os.monotonic, log)
        self.endpoints.append(ex)
        return ex

    def use_exporter(self, ex, spec):
        """At a reload's commit: ``ex`` (exporter_for) serves from now on."""
        old = self.exporter
        if ex is not old:
            if old is not None:
                log.notice("metrics: no longer serving %s" % listen_text(old.address))
                self.close_exporter(old)
            self.exporter = ex
            if ex is not None:
                ex.attach(self.poller)
        if ex is not None:
            changed = ex is not old or ex.allowed != spec.allowed
            ex.allowed = spec.allowed
            if changed:
                self.exporter_serving(ex, spec)

    def exporter_serving(self, ex, spec):
        log.notice("metrics: serving http://%s/metrics to %s" % (sock_name(ex.sock), " ".join(spec.allowed_text)))

    def quota_use(self):
        """[(key, period, bytes used, bytes allowed, FILE:LINE)] of the keys
        under a quota in the traffic table, the QUOTA_SERIES most used.
        Read without the table's lock, as the status report's top
        consumers are (a chunk off at most)."""
        tt, quotas = self.traffic, self.cfg.quota
        if tt is None or not quotas:
            return []
        periods = TrafficControl.periods(self.cfg)
        out = []
        for s, key in tt.slots_in_use():
            qs = quotas_of_key(quotas, key)
            if not qs:
                continue
            pending, bases = tt.used(s)
            for q in qs:
                i = periods.get(q.period)
                if i is not None:
                    out.append((key, period_text(q.period), bases[i] + pending, q.nbytes, q.where))
        out.sort(key=lambda x: -x[2])
        return out[:QUOTA_SERIES]

    def metrics_text(self):
        """The exposition (metrics.render) of everything the master knows."""
        active = []
        fork = {}
        for pid, p in self.procs.items():
            if p.kind == "worker":
                active.append(("threads", str(p.number), str(p.generation), self.clients.get(pid, 0)))
            elif p.kind == "child":
                fork[p.generation] = fork.get(p.generation, 0) + 1
        active.sort(key=lambda a: (int(a[2]), int(a[1])))
        active += [("fork", "children", str(g), n) for g, n in sorted(fork.items())]
        if self.model is not None and self.model.kind == "child" and not fork:
            active.append(("fork", "children", str(self.generation), 0))
        upstreams = []
        wo = self.cfg.wayout
        if wo is not None:
            seen = set()
            for e in wo.entries:
                for srv in e.servers or ():
                    label = getattr(srv, "label", None)
                    if label is not None and label not in seen:
                        seen.add(label)
                        down, k = self.health.status(label)
                        upstreams.append((label, not down, k))
        ex = self.exporter
        server = {"counts": self.counts, "active": active, "workers": self.live["worker"],
                  "generation": self.generation, "started": self.started, "upstreams": upstreams,
                  "quotas": self.quota_use(), "refused": ex.refused if ex is not None else 0}
        return render(families(self.totals.snapshot(), server))

    def read_status(self):
        """Read every line the processes have written (a line may come in
        two reads: its start waits in ``status_rest``) and act on each."""
        data = self.status_rest
        for _ in range(64):
            try:
                chunk = self.os.read(self.status_r, 65536)
            except (BlockingIOError, InterruptedError):
                break
            data += chunk
            if len(chunk) < 65536:
                break
        lines = data.split(b"\n")
        rest = lines.pop()
        # no line of ours is that long: never keep growing
        self.status_rest = rest if len(rest) < 65536 else b""
        for line in lines:
            f = line.split()
            try:
                if len(f) >= 2 and f[0] == b"M":            # a process's counts (metrics.encode)
                    pid = int(f[1])
                    if pid in self.procs or pid in self.ending:
                        self.totals.update(pid, decode(f[2:]))
                elif len(f) == 3 and f[0] == b"B":          # a worker serves
                    self.booted(int(f[1]), int(f[2]))
                elif len(f) == 3 and f[0] == b"L":          # a child counted its client
                    pid, slot = int(f[1]), int(f[2])
                    proc = self.procs.get(pid)
                    if proc is not None and proc.model.limits is not None:
                        self.limit_held[pid] = (proc.model.limits, "slot", slot)
                    elif pid in self.gone and self.limits is not None:
                        self.limits.release(slot)           # it died before we read this
                elif len(f) == 2 and f[0] == b"U":          # ... and released it
                    self.limit_held.pop(int(f[1]), None)
                elif len(f) == 2 and f[0] == b"R":          # an older worker no longer accepts
                    self.retired.add(int(f[1]))
                elif len(f) == 3 and f[0] == b"C":          # a worker's clients now
                    pid = int(f[1])
                    if pid in self.procs:
                        self.clients[pid] = int(f[2])
            except ValueError:
                continue

    def booted(self, generation, number):
        for model in (self.model, self.reload and self.reload.model):
            if model is not None and model.generation == generation:
                model.booted(number)

    def reap(self):
        """Read the status pipe, then hand each process that has ended to
        its model; then read the pipe again (what they wrote just before
        they ended) and add their counts to the totals."""
        self.read_status()
        ended = []
        while True:
            got = self.os.reap()
            if got is None:
                break
            pid, code = got
            ended.append(pid)
            self.released(pid)
            self.clients.pop(pid, None)
            proc = self.procs.pop(pid, None)
            if proc is None:
                continue
            self.live[proc.kind] -= 1
            proc.model.exited(pid, proc, code)
        if ended:
            self.ending = set(ended)
            self.read_status()
            self.ending = ()
            for pid in ended:
                self.totals.ended(pid)

    def released(self, pid):
        """A process has ended: what it counted in the limits goes (and the
        traffic table's lock, if it died holding it)."""
        if self.traffic is not None:
            self.traffic.freed(pid)
        if self.limits is None and not self.limit_held:
            return
        self.gone.append(pid)
        held = self.limit_held.pop(pid, None)
        if held is None:
            return
        limits, kind, value = held
        if kind == "column":
            limits.give_back(value)
        else:
            limits.release(value)

    def clients_now(self):
        """The clients served now, as far as the master knows: its fork-model
        children, and what each worker said last (at most once a second)."""
        return self.live["child"] + sum(self.clients.values())

    def status_text(self):
        """The STATUS= line for systemd (sdnotify.status_line)."""
        return status_line(self)

    def kill_all(self, sig, pids=None):
        for pid in list(self.procs if pids is None else pids):
            try:
                self.os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # --- verdicts (the models call these)
    def halt(self, why):
        """Stop with exit status 1, after ``why``."""
        log.error(why)
        self.exit_status = 1
        self.stop(signal.SIGTERM)

    def generation_failed(self, model, why):
        """``model``'s generation cannot serve: a reload that started it
        fails, a start stops, a serving generation halts the master."""
        if self.stopping is not None:
            return
        r = self.reload
        if r is not None and r.phase is BOOTING and model is r.model:
            self.reload = None
            r.give_up(signal.SIGINT)
            self.reload_failed(why)
        elif self.starting and model is self.model:
            self.start_failed(why, EXIT_ERROR)
        else:
            self.halt("%s; stopping" % why)

    def start_failed(self, why, status):
        log.error("%s; stopping" % why)
        if self.ready is not None:
            self.ready.fail(why)
            self.ready = None
        self.exit_status = status
        self.stop(signal.SIGINT)

    # --- signals
    def on_signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(sig)
        elif sig == signal.SIGHUP:
            if self.stopping is not None:
                return
            if self.starting or self.reload is not None:
                self.hup_pending = True     # once the start or the reload under way is over
            else:
                self.reload = Reload.begin(self)
        elif sig == signal.SIGUSR1:
            self.report()

    def stop(self, sig):
        """SIGTERM: no new clients, the live ones have ``timeout shutdown``.
        SIGINT: at once.  Either way the listeners close now and a reload
        under way is given up."""
        if self.stopping == signal.SIGINT or self.stopping == sig:
            return
        self.stopping = sig
        self.notify.stopping(self.status_text(), self.os.monotonic())
        if sig == signal.SIGTERM:
            live = len(self.procs)
            log.notice("stopping (SIGTERM): no new clients; live connections have up to %gs" %
                       self.cfg.timeout_shutdown if live else "stopping (SIGTERM)")
            grace = self.cfg.timeout_shutdown + KILL_GRACE
        else:
            log.notice("stopping now (SIGINT)")
            grace = KILL_GRACE
        if self.ready is not None:
            self.ready.fail("stopped by %s while starting" % ("SIGTERM" if sig == signal.SIGTERM else "SIGINT"))
            self.ready = None
        self.model.stopping(sig)
        if self.reload is not None:
            self.reload.give_up()
            self.reload = None
        for s in self.listeners.values():
            s.close()
        self.listeners = {}
        self.kill_all(sig)
        self.kill_at = self.os.monotonic() + grace

    # --- SIGUSR1
    def report(self):
        up = self.os.time() - self.started
        log.info("master (pid %d, %s model, generation %d, up %ds, %s: %d rules): %s" % (
            self.os.getpid(), self.cfg.model, self.generation, up, self.config_path, len(self.cfg.ruleset.rules),
            self.model.report()))
        if self.accountant is not None:
            top = self.accountant.top()
            log.info("traffic: today's top consumers: %s" % (
                ", ".join("%s %d bytes" % kv for kv in top) if top else "none yet"))
        self.kill_all(signal.SIGUSR1)

    # --- SIGHUP: see Reload
    def reload_failed(self, why):
        self.counts["failed reloads"] += 1
        log.error("reload failed: %s; still running with the previous configuration" % why)
        # systemd waits for READY=1 after RELOADING=1, success or not
        self.notify.ready("reload failed: %s; %s" % (why, self.status_text()), self.os.monotonic())

