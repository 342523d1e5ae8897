"""Processes: the master, its workers (threads model) or children (fork
model), and the single-client inetd mode.

The master owns the listening sockets and never touches client data.  In
the threads model it pre-forks N workers; each worker accepts from the
shared listeners (EPOLLEXCLUSIVE wakes one worker per connection) and
serves all its clients from one poll loop, with a bounded pool of helper
threads for the steps that block.  In the fork model the master accepts and
forks one child per client, like the classic stand-alone sockd, up to a cap.

Signal handlers only record: the C-level wakeup fd carries the signal
number into the poll loop, which acts on it.  Children leave with os._exit.
"""

import errno
import os
import signal
import socket
import sys
import time

from . import config as C
from .log import log
from .loop import Loop, ThreadExecutor, EPOLLIN, EPOLLEXCLUSIVE
from .session import Context, Session

try:
    from setproctitle import setproctitle
except ImportError:                      # titles are a convenience, not a need
    def setproctitle(title):
        pass

WORKER_BOOT_ERROR = 3
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


class Halt(Exception):
    """Stop the server with a message and an exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


# --- listeners ------------------------------------------------------------------------------

def open_listener(host, port, backlog=4096):
    """A bound, listening, non-blocking socket for (host, port)."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    fam, _, _, _, sa = infos[0]
    s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sa)
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def open_listeners(cfg):
    out = []
    for host, port in cfg.listen:
        try:
            out.append(open_listener(host, port))
        except OSError as exc:
            for s in out:
                s.close()
            raise Halt("cannot listen on %s: %s" % (fmt_hostport(host, port), exc.strerror or exc))
    return out


def fmt_hostport(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


# --- signals --------------------------------------------------------------------------------

class Signals:
    """Signals as bytes on a pipe that a poll loop reads."""

    def __init__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _record)
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)

    def read(self):
        try:
            data = os.read(self.r, 512)
        except (BlockingIOError, InterruptedError):
            return []
        seen = []
        for b in data:
            if b not in seen:
                seen.append(b)
        return seen

    def close(self):
        signal.set_wakeup_fd(-1)
        os.close(self.r)
        os.close(self.w)


def _record(signum, frame):
    """The Python-level handler: the wakeup fd has already recorded it."""


def reset_child_signals():
    signal.set_wakeup_fd(-1)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


# --- the threads model: one worker --------------------------------------------------------

class Worker:
    """A pre-forked worker: accepts and serves clients from one poll loop."""

    def __init__(self, number, cfg, listeners, ident_mode, sigmask=()):
        self.sigmask = sigmask
        self.number = number
        self.cfg = cfg
        self.listeners = listeners
        self.ident_mode = ident_mode
        self.accepting = False
        self.stopping = False
        self.deadline = None
        self.paused_until = 0.0
        self.title_at = 0.0

    def run(self):
        """Runs after the fork; never returns."""
        status = 0
        try:
            reset_child_signals()
            self.loop = loop = Loop()
            self.signals = Signals()
            signal.pthread_sigmask(signal.SIG_SETMASK, self.sigmask)
            loop.add(self.signals.r, EPOLLIN, self.on_signal)
            loop.executor = ThreadExecutor(loop, self.cfg.threads)
            self.ctx = Context(self.cfg, loop, log, self.ident_mode)
            limit = self.cfg.limit_clients
            workers = max(1, self.cfg.workers or 1)
            self.cap = -(-limit // workers) if limit else 0
            self.ctx.on_close = self.on_session_closed
            self.start_accepting()
            self.set_title()
            loop.idle_hooks.append(self.housekeeping)
            loop.run()
        except Exception as exc:            # a worker must never die silently
            log.error("worker %d: %s: %s" % (self.number, type(exc).__name__, exc))
            status = 1
            import traceback
            for line in traceback.format_exc().splitlines():
                log.error(line)
        finally:
            os._exit(status)

    def start_accepting(self):
        if self.accepting or self.stopping:
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

    def make_acceptor(self, lsock):
        ctx = self.ctx

        def on_accept(ev):
            for _ in range(32):
                try:
                    sock, peer = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.pause_accepting(exc)
                    return
                try:
                    Session(ctx, sock, peer, sock.getsockname())
                except OSError:
                    sock.close()
                    continue
                if self.cap and len(ctx.sessions) >= self.cap:
                    self.stop_accepting()
                    return
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
        if not self.stopping and (not self.cap or len(self.ctx.sessions) < self.cap):
            self.start_accepting()

    def on_session_closed(self, session):
        if not self.accepting and not self.stopping and self.loop.now >= self.paused_until:
            if not self.cap or len(self.ctx.sessions) < self.cap:
                self.start_accepting()

    def housekeeping(self):
        now = self.loop.now
        if now >= self.title_at:
            self.set_title()
        if self.stopping and (not self.ctx.sessions or now >= self.deadline):
            self.loop.stop()

    def set_title(self):
        self.title_at = self.loop.now + 1.0
        setproctitle("sockd: worker %d (%d clients)" % (self.number, len(self.ctx.sessions)))

    def on_signal(self, ev):
        for sig in self.signals.read():
            if sig == signal.SIGTERM:
                self.graceful_stop()
            elif sig == signal.SIGINT:
                self.loop.stop()
            elif sig == signal.SIGUSR1:
                self.report()

    def graceful_stop(self):
        if self.stopping:
            return
        self.stop_accepting()
        self.stopping = True
        self.deadline = self.loop.now + 30.0
        for s in self.listeners:
            s.close()
        self.loop.call_later(0, lambda: None)

    def report(self):
        st = self.ctx.stats
        log.info("worker %d: %d clients; %s" % (self.number, len(self.ctx.sessions),
                                                 ", ".join("%s %d" % kv for kv in st.items())))


# --- the master --------------------------------------------------------------------------------

class Master:
    def __init__(self, cfg, ident_mode=None, config_path=None):
        self.cfg = cfg
        self.ident_mode = ident_mode
        self.config_path = config_path or cfg.path
        self.listeners = []
        self.workers = {}          # pid -> worker number (threads) or client peer (fork)
        self.stopping = False
        self.exit_status = 0
        self.boot_failures = []

    def run(self):
        cfg = self.cfg
        self.listeners = open_listeners(cfg)
        for s in self.listeners:
            a = s.getsockname()
            log.notice("listening on %s (%s model)" % (fmt_hostport(a[0], a[1]), cfg.model))
        setproctitle("sockd: master -f %s" % self.config_path)
        self.signals = Signals()
        try:
            if cfg.model == "fork":
                self.run_fork()
            else:
                self.run_threads()
        finally:
            for s in self.listeners:
                s.close()
            self.signals.close()
        return self.exit_status

    # threads model
    def nworkers(self):
        return self.cfg.workers or os.cpu_count() or 1

    def spawn_worker(self, number):
        # Signals stay blocked across the fork until the child has its own
        # handlers: a SIGTERM sent to a worker that has just been born must
        # not land in the master's wakeup pipe and be lost.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self.signals.close()
            Worker(number, self.cfg, self.listeners, self.ident_mode, old).run()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.workers[pid] = (number, time.monotonic())
        return pid

    def run_threads(self):
        for n in range(1, self.nworkers() + 1):
            self.spawn_worker(n)
        import select
        poller = select.poll()
        poller.register(self.signals.r, select.POLLIN)
        while self.workers:
            try:
                poller.poll(1000)
            except InterruptedError:
                pass
            for sig in self.signals.read():
                self.on_signal(sig)
            self.reap(respawn=True)

    def reap(self, respawn):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.workers.pop(pid, None)
            if info is None:
                continue
            self.on_child_exit(pid, info, status, respawn)

    def on_child_exit(self, pid, info, status, respawn):
        if self.cfg.model == "fork":
            return
        number, started = info
        code = os.waitstatus_to_exitcode(status)
        if self.stopping:
            return
        log.error("worker %d (pid %d) exited with %s; starting another" % (
            number, pid, "signal %d" % -code if code < 0 else "status %d" % code))
        now = time.monotonic()
        if code == WORKER_BOOT_ERROR:
            self.halt("worker %d could not start" % number)
            return
        self.boot_failures = [t for t in self.boot_failures if now - t < 10] + (
            [now] if now - started < 1.0 else [])
        if len(self.boot_failures) >= 5:
            self.halt("workers keep dying at start; stopping")
            return
        self.spawn_worker(number)

    def halt(self, why):
        log.error(why)
        self.exit_status = 1
        self.stop(signal.SIGTERM)

    def on_signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(sig)
        elif sig == signal.SIGUSR1:
            log.info("master: %d %s" % (len(self.workers), "children" if self.cfg.model == "fork" else "workers"))
            self.kill_all(signal.SIGUSR1)
        elif sig == signal.SIGCHLD:
            pass

    def stop(self, sig):
        if not self.stopping:
            log.notice("stopping (%s)" % ("SIGTERM" if sig == signal.SIGTERM else "SIGINT"))
        self.stopping = True
        for s in self.listeners:
            s.close()
        self.listeners = []
        self.kill_all(sig)

    def kill_all(self, sig):
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # fork model
    def run_fork(self):
        import select
        cap = self.cfg.limit_clients or 512
        poller = select.poll()
        poller.register(self.signals.r, select.POLLIN)
        listening = False
        by_fd = {s.fileno(): s for s in self.listeners}
        while not (self.stopping and not self.workers):
            want = not self.stopping and len(self.workers) < cap
            if want and not listening:
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                listening = True
            elif not want and listening:
                for fd in by_fd:
                    try:
                        poller.unregister(fd)
                    except KeyError:
                        pass
                listening = False
            try:
                events = poller.poll(1000)
            except InterruptedError:
                events = ()
            for fd, ev in events:
                if fd == self.signals.r:
                    for sig in self.signals.read():
                        self.on_signal(sig)
                        if self.stopping:
                            by_fd = {}
                            listening = False
                elif fd in by_fd and not self.stopping:
                    self.fork_client(by_fd[fd], cap)
            self.reap(respawn=False)

    def fork_client(self, lsock, cap):
        for _ in range(16):
            if len(self.workers) >= cap:
                return
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("accept: %s" % exc.strerror)
                    time.sleep(0.1)
                return
            old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    self.signals.close()
                    reset_child_signals()
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                    for s in self.listeners:
                        s.close()
                    serve_one(self.cfg, sock, self.ident_mode, title=True)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            sock.close()
            self.workers[pid] = (peer, time.monotonic())


def serve_one(cfg, sock, ident_mode=None, title=False):
    """Serve exactly one client on ``sock`` (a fork-model child, or inetd)."""
    loop = Loop()
    ctx = Context(cfg, loop, log, ident_mode)
    ctx.buf = bytearray(1 << 18)
    ctx.mv = memoryview(ctx.buf)
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        log.error("error -- unable to get client address.")
        sock.close()
        return
    session = Session(ctx, sock, peer, local)
    if title:
        def retitle():
            if session.state >= 2:
                setproctitle("sockd: %s@%s -> %s:%d" % (session.user or "unknown", session.client_ip,
                                                        session.dst_host or session.dst_ip, session.dst_port))
                loop.idle_hooks.remove(retitle)
        setproctitle("sockd: client %s" % session.client_ip)
        loop.idle_hooks.append(retitle)
    loop.run(until=lambda: not ctx.sessions)
    loop.close()


def serve_inetd(cfg, ident_mode=None):
    """inetd mode: the client is on standard input."""
    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError as exc:
        raise Halt("--inetd: standard input is not a socket (%s)" % exc.strerror)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    serve_one(cfg, sock, ident_mode)
    return 0


def stdin_is_socket():
    try:
        import stat
        return stat.S_ISSOCK(os.fstat(0).st_mode)
    except OSError:
        return False


def main_server(cfg, ident_mode=None):
    try:
        return Master(cfg, ident_mode).run()
    except Halt as exc:
        log.error(str(exc))
        print("sockd: %s" % exc, file=sys.stderr)
        return exc.status
