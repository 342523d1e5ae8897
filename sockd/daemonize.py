"""Becoming a daemon, through python-daemon's DaemonContext.

Whether to detach: ``-F`` never (and no DaemonContext at all: the terminal,
the working directory and standard error stay); ``-D`` always; otherwise
DaemonContext's own detection decides: a sockd started by init (systemd's
services included: their parent is PID 1) or by a superserver stays
attached, one started from a shell or an init script detaches.

A detaching start keeps the shell waiting until the daemon is serving or
has failed: the process the shell started forks first and waits on a pipe
for one line from the daemon ("ok", or the reason it stopped), and exits 0
or 1 accordingly.  So ``sockd -f FILE -p PIDFILE && cat PIDFILE`` works,
and an init script learns about a failed start from the exit status.
"""

import os
import select
import signal
import sys
import time

READY_TIMEOUT = 60.0


class Ready:
    """The daemon's end of the start-up pipe (a no-op when not detaching)."""

    def __init__(self, fd=-1):
        self.fd = fd

    def _send(self, line):
        if self.fd < 0:
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1

    def ok(self):
        self._send("ok")

    def fail(self, message):
        self._send("error " + message)


def should_detach(foreground, detach):
    if foreground:
        return False
    if detach:
        return True
    # python-daemon is third-party and only a start without -F needs it:
    # imported here so that -V, --inetd and -F never load it
    from daemon.daemon import is_detach_process_context_required
    return is_detach_process_context_required()


def wait_for_daemon(fd):
    """In the process the shell started: the daemon's verdict as an exit
    status, its reason printed on standard error."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    end = time.monotonic() + READY_TIMEOUT
    while b"\n" not in data:
        left = end - time.monotonic()
        if left <= 0:
            print("sockd: the daemon did not report within %ds; see the log" % READY_TIMEOUT, file=sys.stderr)
            return 1
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    if line == "ok":
        return 0
    if line.startswith("error "):
        print("sockd: %s" % line[6:], file=sys.stderr)
    else:
        print("sockd: the daemon stopped while starting; see the log", file=sys.stderr)
    return 1


def daemonize(detach, keep_fds=()):
    """Become a daemon.  Returns a Ready for the daemon to report on; when
    detaching, the calling process itself never returns (it exits with the
    daemon's verdict)."""
    import daemon          # third-party, for this one call (see should_detach)
    r = w = -1
    if detach:
        r, w = os.pipe()
        pid = os.fork()
        if pid > 0:
            os.close(w)
            try:
                status = wait_for_daemon(r)
            except KeyboardInterrupt:
                status = 1
            os._exit(status)
        os.close(r)
    ctx = daemon.DaemonContext(
        detach_process=detach,
        files_preserve=list(keep_fds) + ([w] if w >= 0 else []),
        umask=0o022,
        working_directory="/",
        # keep job-control signals away; sockd installs its own handlers
        # for the rest (DaemonContext's SIGTERM handler would raise)
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    ctx.open()
    return Ready(w)
