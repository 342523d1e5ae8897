"""systemd's service notification protocol (sd_notify(3)), spoken directly:
a unit of ``Type=notify`` hears from the master when it serves, reloads
and stops, what it is doing (STATUS=), and that it is alive (the watchdog).

The protocol is one unix datagram per message, "KEY=VALUE" lines, sent to
the socket that ``NOTIFY_SOCKET`` names: a path, or "@name" for Linux's
abstract namespace.  No library is needed (gunicorn does the same).

Owns the ``Notifier`` (the environment read and unset once, the sending,
the watchdog's rhythm and how often STATUS= may change) and
``status_line``, the master's state in one line.  The master decides when
(its phases); its loop calls ``tick`` on every pass, which costs one
comparison until something is due.  Without NOTIFY_SOCKET every method is
a no-op.  Nothing here raises: a message that cannot be sent is dropped
(systemd is then not listening, or its queue is full).

Imports nothing of sockd.
"""

import os
import socket

SEND_TIMEOUT = 1.0        # seconds a send may block (systemd's queue full)
STATUS_EVERY = 2.0        # seconds between two STATUS= updates between phases
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
NEVER = float("inf")


def notify_address(text):
    """NOTIFY_SOCKET's value as an AF_UNIX address: a path, or "@name" as
    "\\0name" (the abstract namespace).  None for what sockd does not
    speak to: unset, empty, relative, or another transport (vsock:)."""
    if not text:
        return None
    if text.startswith("@"):
        return "\0" + text[1:]
    if text.startswith("/"):
        return text
    return None


def watchdog_interval(usec, pid, mypid):
    """Seconds between two WATCHDOG=1: half of WATCHDOG_USEC (as
    sd_watchdog_enabled(3) advises).  None when the watchdog is off:
    WATCHDOG_USEC unset or not a positive number, or WATCHDOG_PID set
    and naming another process."""
    try:
        us = int(usec or "0")
    except ValueError:
        return None
    if us <= 0:
        return None
    if pid:
        try:
            if int(pid) != mypid:
                return None
        except ValueError:
            return None
    return us / 2e6


class Notifier:
    """The master's side of sd_notify.  ``address`` None: off."""

    def __init__(self, address=None, watchdog=None):
        self.address = address
        self.watchdog = watchdog if address is not None else None   # seconds between pings
        self.next_ping = NEVER
        self.next_status = NEVER
        self.last_status = None
        self.failures = 0                  # datagrams that could not be sent

    @classmethod
    def from_environ(cls, environ=None, pid=None):
        """The notifier the environment asks for.  The variables are then
        removed from ``environ`` (os.environ by default), as
        sd_notify(unset_environment) does: the processes sockd starts
        (workers, rules' shell commands) are not the service."""
        env = os.environ if environ is None else environ
        address = notify_address(env.get("NOTIFY_SOCKET"))
        watchdog = watchdog_interval(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"),
                                     os.getpid() if pid is None else pid)
        for name in ENVIRONMENT:
            env.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self):
        return self.address is not None

    def send(self, *lines):
        """One datagram of ``lines`` ("KEY=VALUE").  Returns whether it was
        sent; never raises."""
        if self.address is None:
            return False
        data = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            self.failures += 1
            return False
        try:
            s.settimeout(SEND_TIMEOUT)
            s.sendto(data, self.address)
            return True
        except OSError:
            self.failures += 1
            return False
        finally:
            s.close()

    def start(self, now):
        """The watchdog's rhythm from ``now`` (monotonic seconds): the
        master calls it once its loop runs."""
        if self.watchdog is not None:
            self.next_ping = now + self.watchdog

    # --- the phases: each with its STATUS= line, sent at once
    def ready(self, status, now):
        """READY=1: the first generation serves, or a reload is over
        (committed or failed: systemd waits for READY=1 after RELOADING=1)."""
        self._with_status(["READY=1"], status, now)

    def reloading(self, monotonic_usec, status, now):
        """RELOADING=1 with the CLOCK_MONOTONIC time at which it began."""
        self._with_status(["RELOADING=1", "MONOTONIC_USEC=%d" % monotonic_usec], status, now)

    def stopping(self, status, now):
        self._with_status(["STOPPING=1"], status, now)

    def _with_status(self, lines, status, now):
        if self.address is None:
            return
        self.last_status = status
        self.next_status = now + STATUS_EVERY
        self.send(*(lines + ["STATUS=" + status]))

    # --- the loop
    def wait(self, now):
        """Seconds until the next watchdog ping (the master polls no longer
        than that), or None when there is none to send."""
        if self.next_ping == NEVER:
            return None
        return max(0.0, self.next_ping - now)

    def tick(self, now, status):
        """On every pass of the master's loop: WATCHDOG=1 when due, and
        STATUS= when ``status()`` has changed and the last one is at least
        STATUS_EVERY old.  ``status`` is called only then."""
        if now < self.next_status and now < self.next_ping:
            return
        lines = []
        if now >= self.next_ping:
            lines.append("WATCHDOG=1")
            self.next_ping = now + self.watchdog
        if now >= self.next_status:
            text = status()
            self.next_status = now + STATUS_EVERY
            if text != self.last_status:
                self.last_status = text
                lines.append("STATUS=" + text)
        if lines:
            self.send(*lines)


def status_line(master):
    """The master's state for STATUS=: its phase, the generation new
    clients get, the clients served now and its workers.  Reads
    ``master``'s phase, stopping, generation, generations, cfg, live and
    clients_now()."""
    clients = master.clients_now()
    what = "%d client%s" % (clients, "" if clients == 1 else "s")
    workers = master.live["worker"]
    if workers:
        what += ", %d worker%s" % (workers, "" if workers == 1 else "s")
    if master.stopping is not None:
        return "stopping: %s still finishing" % what
    phase = master.phase
    if phase == "starting":
        return "starting generation %d (%s model)" % (master.generation, master.cfg.model)
    text = "serving: generation %d (%s model), %s" % (master.generation, master.cfg.model, what)
    if phase == "booting":
        text += "; reloading: generation %d starting" % master.generations
    elif phase == "retiring":
        text += "; older workers finishing"
    return text
