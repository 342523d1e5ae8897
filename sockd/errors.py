"""Every error sockd raises on purpose, and the exit statuses.

One module, imported by all and importing nothing of sockd, so that any
module can raise or catch any of these without an import circle.  What
each class means to the caller:

* ``Bad``: one mistake on one line of a file, raised by a converter
  while a file is parsed; the parser adds the file and line number.
* ``ConfigError``: every problem of one configuration, as
  ``FILE:LINE: message (near 'token')`` lines, ready to print.
* ``ProtocolError``: malformed bytes from a peer, with the failure reply
  to send before closing, when the protocol has one.
* ``PrivilegeError``, ``PidfileError``: a start that cannot go on, with the
  message for the user.
* ``Halt``: stop the whole server with a message and an exit status.
* ``BackedOff``: a login the back-off refused before checking it (handed
  to the session's callback, never raised).

``report_config_error`` is the one way a ConfigError reaches the user: its
lines, each to every place the caller names (stderr, the log, both).
"""

import sys

EXIT_OK = 0
EXIT_ERROR = 1              # a start that failed, a configuration with problems
EXIT_USAGE = 2              # a bad command line
WORKER_BOOT_ERROR = 3       # a worker or child could not start: the master stops
EXIT_TOOL_USAGE = 255       # test_sockd_conf's classic status for a bad command line


class Bad(Exception):
    """One problem on one line; ``token`` is the text it is near."""

    def __init__(self, message, token=None):
        super().__init__(message)
        self.token = token


class BackedOff(Exception):
    """A login refused by the login back-off before any check: ``text`` is
    the reason for the log line, or None when the address's refusals were
    logged lately (then there is no line)."""

    def __init__(self, text):
        super().__init__(text or "backed off")
        self.text = text


class ConfigError(Exception):
    """Every problem of one configuration file: ``problems`` is a list of
    (file, line, message) tuples, already formatted for the user."""

    def __init__(self, problems):
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self):
        return ["%s:%d: %s" % p for p in self.problems]

    def summary(self, path):
        n = len(self.problems)
        return "%d problem%s in %s" % (n, "" if n == 1 else "s", path)


def report_config_error(exc, *emits):
    """Give every ``FILE:LINE: message`` line of ``exc`` (a ConfigError) to
    each of ``emits`` in turn, line by line: callables taking one string,
    such as ``log.error`` or ``to_stderr``.  Returns None; raises only what
    an emit raises."""
    for line in exc.lines():
        for emit in emits:
            emit(line)


def to_stderr(line):
    """Print ``line`` on standard error (an emit for report_config_error)."""
    print(line, file=sys.stderr)


class ProtocolError(Exception):
    """Malformed input.  ``reply`` is the failure reply to send before
    closing (bytes), or ``None`` when the protocol offers none (an unknown
    version: we cannot know which language the peer speaks)."""

    def __init__(self, message, reply=None):
        super().__init__(message)
        self.reply = reply


class PrivilegeError(Exception):
    """A user, group or chroot that a serving process cannot become."""


class PidfileError(Exception):
    """A pid file that stops the start, with the message for the user."""


class Halt(Exception):
    """Stop the server with a message and an exit status."""

    def __init__(self, message, status=EXIT_ERROR):
        super().__init__(message)
        self.status = status
