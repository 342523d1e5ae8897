"""The settings table: every sockd.conf directive, in the manner of
gunicorn's ``Setting`` classes -- its words, argument form, default, one
line of documentation, the converter that reads its value, and the
command-line flag that overrides it.  The parser (``config``), the command
line (``cli.build_parser``) and the test that checks sockd.conf(5) and
sockd(8) all read this one table.

Pure data; imports only ``validators`` of sockd.
"""

import os

from .validators import (DEFAULT_PORT, to_address, to_bool, to_chroot, to_choice, to_facility, to_failures,
                         to_group, to_gss_level, to_gss_service, to_int, to_listen, to_metrics, to_pidfile, to_port_range, to_rate, to_seconds, to_size,
                         to_stagger, to_user, system_chroot, system_group, system_user, to_db_path, to_interval,
                         to_limit, to_quota)


def shell_path(text):
    """A path given on the command line is the shell's: relative to the
    directory sockd was started in, made absolute before it is checked (a
    daemon works from /).  An empty one (an init script's unset variable)
    counts as not given.  Returns the path or None."""
    return os.path.abspath(text) if text else None


class Setting:
    """One directive: its words, argument form, default, doc and converter,
    and the command-line flag that overrides it, if any."""

    def __init__(self, key, args, default, doc, convert=None, repeat=False, cli=None, many=False,
                 cli_value=None, check=None, whole=False):
        self.key = key            # "timeout negotiate"
        self.args = args          # "SECONDS": the docs, the messages and the flag's metavar
        self.default = default
        self.doc = doc            # one line: sockd.conf(5)'s gist and the flag's --help
        self.convert = convert    # token -> value (one argument); raises Bad
        self.repeat = repeat      # a list, one entry per line
        self.cli = cli            # the command-line flag that overrides it ("-N"), or None
        self.many = many          # one or more arguments: a tuple of values
        # the flag's text before the converter sees it (None: as given); it
        # returns None for "as if the flag were not given"
        self.cli_value = cli_value
        # value -> value, raises Bad: what only the running system can tell
        # (does the user exist?); run by configload, never by the parser
        self.check = check
        # the converter takes the whole argument list (a line of several
        # kinds of argument: metrics ADDRESS:PORT CIDR...)
        self.whole = whole

    @property
    def attr(self):
        return self.key.replace(" ", "_").replace("-", "_")


SETTINGS = [
    Setting("listen", "ADDRESS:PORT", [("0.0.0.0", DEFAULT_PORT)],
            "address and port to accept clients on; repeatable; [ADDRESS]:PORT for IPv6",
            to_listen, repeat=True),
    Setting("workers", "N", 0, "worker processes in the threads model (0: one per CPU)",
            to_int(0, 256), cli="-N"),
    Setting("affinity", "cpu|none", "none",
            "cpu: each worker pinned to one CPU, and a socket per CPU on every listener, so that a connection "
            "goes to the worker on the CPU it arrived on (threads model); none: workers share one queue",
            to_choice("cpu", "none")),
    Setting("model", "fork|threads", "threads",
            "threads: pre-forked workers; fork: one child process per client", to_choice("fork", "threads"),
            cli="-m"),
    Setting("threads", "N", 16, "helper threads per worker for host-name lookups (passwords: helpers passwords)",
            to_int(1, 1024)),
    Setting("limit clients", "N", 0,
            "most clients served at once (0: no limit; in the fork model, 0 means 512 children)",
            to_int(0, 10 ** 6)),
    Setting("timeout negotiate", "SECONDS", 30.0,
            "time a client has to send its whole greeting and request", to_seconds),
    Setting("timeout connect", "SECONDS", 120.0,
            "time to reach the destination (CONNECT) or receive the connection (BIND)", to_seconds),
    Setting("timeout idle", "SECONDS", 7200.0, "a relay with no traffic either way for this long is closed (0: never)",
            to_seconds),
    Setting("log facility", "NAME", "daemon", "syslog facility", to_facility),
    Setting("log socket", "PATH", "/dev/log", "the syslog socket to send to", str),
    # -- who is asking: identd, methods, passwords --
    Setting("timeout ident", "SECONDS", 15.0, "time the client's identd has to answer", to_seconds),
    Setting("methods", "METHOD...", ("none",),
            "SOCKS 5 methods offered, in order of preference: none, username, gssapi",
            to_choice("none", "username", "gssapi"),
            many=True),
    Setting("passwd", "FILE", None, "RFC 1929 users: an htpasswd file with bcrypt hashes", str),
    Setting("limit commands", "N", 4, "shell commands running at once, per worker", to_int(1, 256)),
    # -- BIND, UDP, routing --
    Setting("bind check-peer", "yes|no", True,
            "BIND: the incoming connection must come from the address the request named "
            "(no: from any host the rules let the client reach)", to_bool),
    Setting("udp strict", "yes|no", True,
            "UDP: drop datagrams from a client port other than the one announced (no: learn it)", to_bool),
    Setting("udp advertise", "ADDRESS", None,
            "UDP: the address to give clients for the relay (behind NAT); default: the one they reached",
            to_address),
    Setting("route", "FILE", None, "the multi-homed route file: local address per destination", str),
    # -- operations: daemon, privileges, reload --
    Setting("pidfile", "PATH", None, "write the master's pid to PATH", to_pidfile,
            cli="-p", cli_value=shell_path),
    Setting("user", "NAME", None, "user that workers and children run as; the master binds its ports first",
            to_user, check=system_user),
    Setting("group", "NAME", None, "group that workers and children run as (default: the user's groups)",
            to_group, check=system_group),
    Setting("chroot", "DIR", None, "directory that workers and children are shut in", to_chroot,
            check=system_chroot),
    Setting("timeout shutdown", "SECONDS", 30.0,
            "after SIGTERM, the time live connections have to finish before they are closed", to_seconds),
    Setting("reload recheck", "yes|no", False,
            "after SIGHUP, close the live connections that the new rules refuse", to_bool),
    # -- limits and hardening --
    Setting("limit per-address", "N", 0, "most clients at once from one address (0: no limit)",
            to_int(0, 10 ** 6)),
    Setting("limit rate", "N/SECONDS", None, "most new clients from one address in SECONDS", to_rate),
    Setting("deny-private-destinations", "yes|no|auto", "auto",
            "refuse loopback, link-local and this host's addresses unless a rule names them "
            "(auto: for clients not on loopback)", to_choice("yes", "no", "auto")),
    # -- SOCKS 4 under passwords (issue 12) --
    Setting("socks4 trust-userid", "yes|no", False,
            "serve SOCKS 4 and 4A, whose USERID is a claim without a password, even when methods "
            "names no method without one", to_bool),
    # -- helper threads: bounded and fair per client address (issue 12: no client stalls a worker) --
    Setting("helpers passwords", "N", 4, "helper threads per worker for password (bcrypt) checks",
            to_int(1, 256)),
    Setting("helpers per-address", "N", 4,
            "helper jobs of one client address running at once, per pool (at most its threads less one)",
            to_int(1, 1024)),
    Setting("helpers queue", "N", 64,
            "helper jobs of one client address waiting, per pool; more are refused at once", to_int(1, 100000)),
    # -- the login back-off (issue 12): failed RFC 1929 logins per client address --
    Setting("auth failures", "N/SECONDS|off", (10, 60.0),
            "failed logins from one address within SECONDS that start a penalty (off: no back-off)",
            to_failures),
    Setting("auth penalty", "SECONDS", 60.0,
            "how long an address's logins are refused after too many failures (doubled each time in a row)",
            to_seconds),
    Setting("auth penalty-max", "SECONDS", 600.0, "the longest penalty; also how long one is remembered",
            to_seconds),
    # -- issue 12: what BIND may listen on, pending BINDs, what a worker may buffer --
    Setting("bind ports", "LOW-HIGH", None,
            "BIND: the ports a client may ask to listen on (default: none, the kernel chooses every one)",
            to_port_range),
    Setting("limit binds", "N", 16,
            "BINDs waiting for their peer at once from one client address, across workers (0: no limit)",
            to_int(0, 10 ** 6)),
    Setting("limit buffers", "SIZE", 64 << 20,
            "most bytes one process keeps in all for receivers slower than their senders (k, M, G)",
            to_size(0, 1 << 40)),
    # -- issue 17: streams -- bulk moved kernel to kernel --
    Setting("relay splice", "yes|no", True,
            "move a session's bytes past each direction's first 64 KiB with splice(2), through a pipe, "
            "instead of copying them through the worker (GSS-API protected sessions always copy; no: always copy)", to_bool),
    # -- issue 13: GSS-API (RFC 1961), method gssapi --
    Setting("gssapi keytab", "FILE", None,
            "the service keytab (default: Kerberos' own, KRB5_KTNAME or /etc/krb5.keytab)", str),
    Setting("gssapi service", "NAME...", ("rcmd",),
            "service names a client may ask for: rcmd (any host), rcmd/HOST, rcmd/HOST@REALM",
            to_gss_service, many=True),
    Setting("gssapi levels", "LEVEL...", (0, 1, 2),
            "protection levels granted: clear (0), integrity (1), confidentiality (2)", to_gss_level, many=True),
    Setting("gssapi nec", "yes|no", True,
            "accept the NEC variant's unwrapped level octet (curl --socks5-gssapi-nec)", to_bool),
    # -- issue 14: ways out --
    Setting("upstream", "FILE", None,
            "the way-out file (socks.conf(5) grammar): which destinations go direct, through which "
            "SOCKS or HTTP proxies, or nowhere (default: all direct)", str),
    # -- issue 14: Happy Eyeballs (RFC 8305) for sockd's own connects; the resolver cache of a worker --
    Setting("connect stagger", "SECONDS", 0.25,
            "a destination with several addresses: the next one is tried after this long without an answer, "
            "or at once when one fails (RFC 8305; 0: one after another)", to_stagger),
    Setting("resolve cache", "N", 1024, "host names each worker remembers the addresses of (0: no cache)",
            to_int(0, 100000)),
    Setting("resolve life", "SECONDS", 60.0, "how long a remembered answer is used before the name is asked again",
            to_seconds),
    Setting("resolve failure-life", "SECONDS", 10.0,
            "how long a name that did not resolve is answered as failed without asking again", to_seconds),
    # -- issue 14: upstream proxies, their failover --
    Setting("timeout upstream", "SECONDS", 10.0,
            "time one upstream proxy has to answer before the next is tried (at most half of timeout connect; "
            "0: only timeout connect)", to_seconds),
    # -- issue 15: traffic control -- bandwidth limits, quotas, the accounting database --
    Setting("limit bandwidth", "KEY RATE [burst SIZE]", [],
            "bytes per second each way for KEY (session, address CIDR [each], user NAME|*, rule TAG), "
            "shared by every session under it; repeatable", to_limit, repeat=True),
    Setting("quota", "KEY BYTES per PERIOD [cut|finish]", [],
            "bytes for KEY (address CIDR [each], user NAME|*, rule TAG) per day, week, month or rolling "
            "window (24h, 7d); repeatable", to_quota, repeat=True),
    Setting("accounting database", "PATH", "/var/lib/sockd/accounting.db",
            "the SQLite file that keeps the traffic counts across restarts", to_db_path),
    Setting("accounting interval", "SECONDS", 5.0,
            "how often the master writes the counts to the database (a crash loses at most this much)",
            to_interval),
    Setting("accounting record", "auto|yes|no", "auto",
            "keep every user's and client address's totals (auto: when a limit or quota is set)",
            to_choice("auto", "yes", "no")),
    Setting("accounting keep", "DURATION", 400 * 86400.0,
            "how long the database keeps hourly counts (older ones are deleted once a day)", to_seconds),
    # -- issue 16: the metrics endpoint (Prometheus), served by the master --
    Setting("metrics", "ADDRESS:PORT [CIDR...]", None,
            "serve Prometheus metrics on http://ADDRESS:PORT/metrics to the clients in CIDR... "
            "(default: loopback only); off unless given", to_metrics, whole=True),
    # -- issue 17, scale: the open-files limit (RLIMIT_NOFILE) the master raises at start and reload --
    Setting("limit descriptors", "N", 0,
            "open files each process may have; as root the hard limit is raised to it (0: four per client of "
            "limit clients and 256 more, or 65536 without one)", to_int(0, 1 << 30)),
]
BY_KEY = {s.key: s for s in SETTINGS}
GROUPS = {k.split(" ", 1)[0] for k in BY_KEY if " " in k}
