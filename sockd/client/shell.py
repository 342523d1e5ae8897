"""The ``: shell command`` of a socks.conf line, run with the client-side
meanings of the % codes (classic-sockd.md §3.6):

    %A  this host's name          %a  this host's address
    %c  connect, bind or udp      %p  the pid of this program
    %S  service name of the port  %s  the port number
    %U  login name                %u  user of the effective uid
    %Z  destination name (or IP)  %z  destination IP
    %%  a literal %               any other %x expands to nothing

Expansion, the safe character set and the runner are the server's
(sockd.shell): every value is cut to the safe set, the command runs with
/bin/sh and stdio on /dev/null, beside the program rather than before its
connection.  A program about to exit waits a few seconds for commands
still running, so that a refusal's command is not lost with it.
"""

import atexit
import logging
import threading

from .. import shell as S

log = logging.getLogger("sockd.client")
EXIT_WAIT = 5.0


class _Log:
    """What sockd.shell.Runner logs through, on the client's logger."""

    def error(self, msg):
        log.error("%s", msg)

    def debug(self, msg):
        log.debug("%s", msg)


_runner = None
_lock = threading.Lock()


def submit(template, values, where):
    """Run ``template`` with ``values`` (a dict of the % letters) without
    waiting for it."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = S.Runner(_Log(), limit=4)
            atexit.register(_runner.drain, EXIT_WAIT)
    _runner.submit(template, lambda: values, where)
