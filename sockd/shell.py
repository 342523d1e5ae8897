"""Shell-command responses: the ``: command`` of a rule and the
``#NO_IDENTD:`` and ``#BAD_ID:`` lines.

``expand`` is pure: the classic % substitutions (Wietse Venema's
tcp_wrappers percent_x, as the classic sockd used it), with every
substituted value cut to the safe characters (``sanitise``) so that nothing
a client sends -- user id, host name, identd answer -- can reach the shell
as syntax.  The administrator's template itself is trusted.

``Runner`` runs commands with /bin/sh, stdin/stdout/stderr on /dev/null,
without holding up the client's answer (the classic sockd waited for each
command), at most ``limit`` at a time, and logs a command that cannot be run
or fails.
"""

import os
import queue
import socket
import subprocess
import threading
import time

from .addresses import service_name
from .protocol import CMD_BIND

# The characters a substituted value keeps: none means anything to /bin/sh
# in an unquoted word, between "..." or between '...', wherever it stands
# in the word, so a value cannot change how the command line is split.
# Left out of tcp_wrappers' ok_chars (which the classic sockd used):
#   !  a word of its own at the start of a command negates it;
#   =  a first word NAME=VALUE is an assignment, not a command.
# Never in: \ (a value ending in one escapes the template's closing quote
# or the blank after it; tcp_wrappers never had it either: the backslash in
# percent_x.c's ok_chars continues the C string literal), quotes, $ and `,
# ;&|<>(), blanks, newlines and control characters, the patterns *?[], #, ~
# and {} (comment, tilde and brace expansion), ^ (a Bourne shell pipe), and
# everything outside ASCII (some locales' multibyte characters carry a
# backslash or quote byte).  Host names, addresses, ports and ordinary user
# names need nothing more; % stays, as a value is never expanded again.
SAFE = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz@%-_+:,./")
REFUSED = "_"
MAX_COMMAND = 8192        # the classic BUFSIZ
MAX_QUEUED = 64


def sanitise(value):
    """``value`` as it may stand in a command line: each character outside
    SAFE becomes '_', so does a leading '-' (a value is never read as a
    command's option), and an empty value is '_' (an unquoted empty value
    would take its word away and shift the arguments after it).  The result
    is never empty and keeps the length of a non-empty value."""
    text = str(value)
    out = "".join(c if c in SAFE else REFUSED for c in text)
    if not out:
        return REFUSED
    if out[0] == "-":
        return REFUSED + out[1:]
    return out


def expand(template, values):
    """Expand %A %a %c %p %S %s %U %u %Z %z %% in ``template``.

    ``values`` maps the letters to their (raw) values; each is sanitised as
    it is substituted, once (a % in a value is not expanded again).  Any
    other %x, and a letter ``values`` lacks, expands to nothing."""
    out = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "%" and i + 1 < n:
            k = template[i + 1]
            i += 2
            if k == "%":
                out.append("%")
            else:
                v = values.get(k)
                if v is not None:
                    out.append(sanitise(v))
            continue
        out.append(c)
        i += 1
    return "".join(out)


def check(command):
    """None when ``command`` may run, else why not (classic checks)."""
    if len(command) > MAX_COMMAND:
        return "shell command too long: %s..." % command[:60]
    if not any(c.isalnum() for c in command):
        return 'error -- shell command "%s" contains no alphanumeric characters.' % command[:60]
    return None


def values_for(session_like, pid=None):
    """The % table for a session (or anything with the same attributes).
    Host names (%A, %Z) are looked up here: call it off the poll loop."""
    client_ip = session_like.client_ip
    dst_ip = session_like.dst_ip or ""
    port = session_like.dst_port
    service = service_name(port)
    return {
        "A": lookup_name(client_ip) or client_ip,
        "a": client_ip,
        "c": "bind" if session_like.command == CMD_BIND else "connect",
        "p": str(pid or os.getpid()),
        "S": service,
        "s": str(port),
        "U": session_like.realuser if session_like.realuser is not None else "unknown",
        "u": session_like.user if session_like.user is not None else "unknown",
        "Z": session_like.dst_host or lookup_name(dst_ip) or dst_ip,
        "z": dst_ip,
    }


def lookup_name(ip):
    if not ip:
        return None
    try:
        return socket.gethostbyaddr(ip)[0]
    except OSError:
        return None


class Runner:
    """Runs expanded commands on a few threads of its own, so that a slow
    command (the classic example: finger back to the client) never delays a
    client and never takes a thread from name resolution or identd."""

    def __init__(self, log, limit=4):
        self.log = log
        self.limit = max(1, limit)
        self.queue = None           # made at the first command: most processes never run one
        self.threads = []
        self.lock = threading.Lock()
        self.busy = 0
        self.pending = 0            # submitted and not yet finished: drain() waits for 0

    def submit(self, template, make_values, where=""):
        """Queue ``template`` to run with the values ``make_values()`` gives
        (called on the runner's thread).  Never blocks."""
        if self.queue is None:
            self.queue = queue.Queue(MAX_QUEUED)
        with self.lock:
            self.pending += 1
        try:
            self.queue.put_nowait((template, make_values, where))
        except queue.Full:
            with self.lock:
                self.pending -= 1
            self.log.error("too many shell commands waiting; not running the one of %s" % where)
            return
        with self.lock:
            if self.busy + self.queue.qsize() > len(self.threads) and len(self.threads) < self.limit:
                t = threading.Thread(target=self._work, name="sockd-shell", daemon=True)
                self.threads.append(t)
                t.start()

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            with self.lock:
                self.busy += 1
            try:
                self.run(*item)
            except Exception as exc:      # a command must never take the worker down
                self.log.error("shell command: %s" % exc)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.pending -= 1
                self.queue.task_done()

    def run(self, template, make_values, where):
        command = expand(template, make_values())
        problem = check(command)
        if problem:
            self.log.error(problem)
            return
        self.log.debug("running shell command of %s: %s" % (where, command))
        try:
            with open(os.devnull, "r+b") as null:
                p = subprocess.Popen(["/bin/sh", "-c", command], stdin=null, stdout=null, stderr=null,
                                     close_fds=True, start_new_session=True)
        except OSError:
            self.log.error("Cannot execute shell command for pid %d" % os.getpid())
            return
        code = p.wait()
        if code != 0:
            self.log.error("shell command of %s exited with status %d: %s" % (where, code, command[:200]))

    def drain(self, timeout):
        """Wait (at most ``timeout`` seconds) until every submitted command
        has finished: used by a process that is about to exit.  Returns
        whether they all did.  (A job is counted from submit() to the end
        of its run, so one just taken off the queue is not missed.)"""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                if not self.pending:
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)
