"""Small administrator's commands that come with the server:

    test_sockd_conf [-i] [-I] [-B] [-C FILE] USER SRC DST PORT|SERVICE
    sockd-passwd [-c] [-D] [-i] [-C COST] FILE USER
    sockd-accounting [-f FILE | -d DB] [-p PERIOD] [-k KIND] [--csv] [--bytes] [--reset KEY]

test_sockd_conf runs a hypothetical request through the same decision as
sockd (decision.decide: the rules, the private-destination guard and the
identd matrix, with identd's answer simulated by -i, -I and -B) and prints
every line it examined and what decided; under methods that all need a
password it notes that SOCKS 4 clients are refused before the rules
(auth.socks4_allowed).  Its exit
status is the classic contract, odd as it is: 1 when the request would be
permitted, 0 when denied, 255 for a usage or configuration error.

sockd-accounting reads the accounting database (accounting.Store, opened
read-only unless it resets) and prints the totals of each key -- user,
client address, network, rule -- for a period, as a table or CSV; --reset
forgets a key's counts (a running sockd hears of it within its accounting
interval).  Exit status 0, 1 when the database cannot be read or written,
2 for a usage mistake.
"""

import argparse
import csv
import getpass
import os
import socket
import sqlite3
import sys
import tempfile
import time

from . import accounting as A
from . import auth
from . import config as C
from . import configload
from . import decision as D
from . import ident as I
from . import protocol as P
from . import passwd as PW
from . import rules as R
from . import shell
from . import traffic as T
from .addresses import service_name
from .errors import EXIT_TOOL_USAGE as EXIT_USAGE
from .errors import Bad, ConfigError, report_config_error, to_stderr
from .validators import to_port


NOT_THE_USER = "\0unknown"     # -B: identd names a user no request can claim (no NUL in a USERID)


def _address(text):
    """An address literal, or the first address of a name: (ip, names)."""
    try:
        R.ip_key(text)
        return text, ()
    except ValueError:
        pass
    infos = socket.getaddrinfo(text, None, 0, socket.SOCK_STREAM)
    return infos[0][4][0], (text.lower(),)


def _expand(template, user, src, dst, port, realuser):
    """A shell command as sockd would run it, with addresses for names."""
    values = {"A": src, "a": src, "c": "connect", "p": str(os.getpid()), "S": service_name(port),
              "s": str(port), "U": realuser, "u": user, "Z": dst, "z": dst}
    return shell.expand(template, values)


def test_sockd_conf_parser():
    p = argparse.ArgumentParser(
        prog="test_sockd_conf",
        description="Show which sockd.conf line decides a request (exit 1: permit, 0: deny).")
    p.add_argument("-i", dest="mode", action="store_const", const="i",
                   help="identd checks, lenient; simulate an unreachable identd")
    p.add_argument("-I", dest="mode", action="store_const", const="I",
                   help="identd checks, strict; simulate an unreachable identd")
    p.add_argument("-B", dest="bad", action="store_true",
                   help="simulate identd naming another user (the real user becomes 'unknown')")
    p.add_argument("-C", dest="config", default="/etc/sockd.conf", metavar="FILE",
                   help="configuration file (default /etc/sockd.conf)")
    p.add_argument("-M", dest="method", choices=("none", "username", "gssapi"), metavar="METHOD",
                   help="the SOCKS 5 method the client authenticated with (none, username, gssapi: "
                        "USER is then a principal, alice@REALM), for method= lines; default: none given, "
                        "as a SOCKS 4 client")
    p.add_argument("user")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("port")
    return p


def test_sockd_conf(argv=None):
    """Returns the classic status: 1 permitted, 0 denied, 255 a mistake."""
    try:
        a = test_sockd_conf_parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else EXIT_USAGE
    try:
        cfg = configload.load(a.config)
    except ConfigError as exc:
        report_config_error(exc, to_stderr)
        return EXIT_USAGE
    try:
        port = to_port(a.port)
    except Bad as exc:
        print("test_sockd_conf: %s: %s" % (a.port, exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        src, src_names = _address(a.src)
        dst, dst_names = _address(a.dst)
    except OSError as exc:
        print("test_sockd_conf: cannot resolve: %s" % exc, file=sys.stderr)
        return EXIT_USAGE

    return explain(cfg, a, src, src_names, dst, dst_names, port)


def explain(cfg, a, src, src_names, dst, dst_names, port):
    """Print the lines examined and the verdict; returns the status."""
    rs = cfg.ruleset
    print("USER:%s, SRC:%s, DST:%s, PORT:%d%s" % (a.user, a.src, a.dst, port,
                                                 ", METHOD:%s" % a.method if a.method else ""))
    if not auth.socks4_allowed(cfg):
        print("Note: SOCKS 4 and 4A clients are refused before these lines (methods %s, socks4 trust-userid no); "
              "a SOCKS 5 client must log in as %s." % (" ".join(cfg.methods), a.user))
    trace = []
    rs.match(R.Request(R.ip_key(src), R.ip_key(dst), port, a.user, src_names, dst_names, a.method), trace)
    for r in trace:
        print("Line %d: %s" % (r.line, r.text + (" : " + r.command if r.command else "")))
    # identd's answer as the flags say: another user (-B), no answer (-i,
    # -I), or else the user the request claims
    if a.bad:
        ident = (I.USERID, NOT_THE_USER)
    elif a.mode:
        ident = (I.UNREACHABLE, "simulated")
    else:
        ident = (I.USERID, a.user)
    v = D.decide(D.Ask(R.ip_key(src), [dst], port, D.CONNECT, user=a.user, ident=ident,
                       ident_default=a.mode or ("i" if a.bad else None), src_names=src_names,
                       dst_names=dst_names, method=a.method), cfg)
    rule = v.rule

    def show_command(label, template, realuser="unknown"):
        print("%s %s" % (label, _expand(template, a.user, src, dst, port, realuser)))

    asked_identd = rule is not None and rule.action == R.PERMIT and D.ident_mode(rule, a.mode) != "n"
    if v.alert is not None:
        if rs.bad_id:
            show_command("Line %d: #BAD_ID:" % rs.bad_id[1], rs.bad_id[2])
        print("Access denied: user-id does not agree with the one reported by identd (reply 93).")
        return 0
    if a.mode and not a.bad and asked_identd and rs.no_identd:
        show_command("Line %d: #NO_IDENTD:" % rs.no_identd[1], rs.no_identd[2])
    if v.allowed:
        if a.mode and not a.bad and asked_identd:
            print("identd cannot be reached; permitted in lenient mode.")
        print("*** Permitted by line %d." % rule.line)
        if rule.command:
            show_command("Shell command:", rule.command)
        return 1
    if v.code4 == P.S4_NO_IDENTD:
        print("Access denied: cannot verify user-id (reply 92).")
    elif v.why:
        print("*** Denied: %s." % v.why)
    elif rule is None:
        print("*** No match with any line. Access denied.")
    else:
        print("*** Denied by line %d." % rule.line)
        if rule.command:
            show_command("Shell command:", rule.command)
    return 0


def sockd_passwd(argv=None):
    """Add, change or delete a user of an htpasswd file (bcrypt only)."""
    p = argparse.ArgumentParser(prog="sockd-passwd",
                                description="Add or change a user's password in a sockd passwd file.")
    p.add_argument("-c", dest="create", action="store_true", help="create FILE if it does not exist")
    p.add_argument("-D", dest="delete", action="store_true", help="delete USER")
    p.add_argument("-i", dest="stdin", action="store_true",
                   help="read the password from standard input instead of asking twice")
    p.add_argument("-C", dest="cost", type=int, default=PW.DEFAULT_COST, metavar="COST",
                   help="bcrypt cost, 4 to 17 (default %d)" % PW.DEFAULT_COST)
    p.add_argument("file")
    p.add_argument("user")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if not 4 <= a.cost <= 17:
        print("sockd-passwd: -C: cost must be 4 to 17", file=sys.stderr)
        return 2
    if not a.user or ":" in a.user or len(a.user.encode()) > PW.MAX_USER or any(c.isspace() for c in a.user):
        print("sockd-passwd: bad user name (no ':' or blanks, at most %d bytes)" % PW.MAX_USER, file=sys.stderr)
        return 2
    try:
        with open(a.file, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        if not a.create and not a.delete:
            print("sockd-passwd: %s does not exist (use -c to create it)" % a.file, file=sys.stderr)
            return 1
        lines = []
    except OSError as exc:
        print("sockd-passwd: %s: %s" % (a.file, exc.strerror), file=sys.stderr)
        return 1
    kept = [ln for ln in lines if ln.partition(":")[0].strip() != a.user]
    if a.delete:
        if len(kept) == len(lines):
            print("sockd-passwd: no user %s in %s" % (a.user, a.file), file=sys.stderr)
            return 1
        out = kept
    else:
        if a.stdin:
            pw = sys.stdin.readline().rstrip("\r\n")
        else:
            pw = getpass.getpass("New password for %s: " % a.user)
            if getpass.getpass("Again: ") != pw:
                print("sockd-passwd: the passwords differ", file=sys.stderr)
                return 1
        if not pw:
            print("sockd-passwd: empty password refused", file=sys.stderr)
            return 1
        if len(pw.encode()) > 72:
            print("sockd-passwd: bcrypt uses at most 72 bytes of a password", file=sys.stderr)
            return 1
        out = kept + ["%s:%s" % (a.user, PW.make_hash(pw.encode(), a.cost))]
    d = os.path.dirname(os.path.abspath(a.file))
    fd, tmp = tempfile.mkstemp(prefix=".sockd-passwd.", dir=d)
    try:
        try:
            mode = os.stat(a.file).st_mode & 0o777
        except OSError:
            mode = 0o640
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in out))
        os.replace(tmp, a.file)
    except OSError as exc:
        os.unlink(tmp)
        print("sockd-passwd: %s: %s" % (a.file, exc.strerror), file=sys.stderr)
        return 1
    return 0


# --- sockd-accounting ---------------------------------------------------------------------

KINDS = ("user", "address", "rule")


def accounting_parser():
    p = argparse.ArgumentParser(
        prog="sockd-accounting",
        description="Print the traffic totals that sockd keeps per user, client address, network and rule.")
    p.add_argument("-f", dest="config", metavar="FILE", default=None,
                   help="the sockd.conf whose 'accounting database' to read (default /etc/sockd.conf)")
    p.add_argument("-d", dest="db", metavar="DB", default=None, help="the database itself (overrides -f)")
    p.add_argument("-p", dest="period", metavar="PERIOD", default="day",
                   help="day (today, the default), yesterday, week, month, all, 24h, 7d (the last hours or "
                        "days), YYYY-MM-DD, YYYY-MM, or FROM..TO of those dates")
    p.add_argument("-k", dest="kind", choices=KINDS, default=None, help="only keys of this kind")
    p.add_argument("--csv", action="store_true", help="CSV (exact bytes) instead of a table")
    p.add_argument("--bytes", action="store_true", help="exact bytes in the table, not K/M/G")
    p.add_argument("--reset", nargs="+", metavar="KEY",
                   help="forget every count of KEY (such as: user alice; address 10.1.2.3) and exit")
    return p


def database_of(a):
    """The database -d names, else the one of -f's file (read with no
    check of what it names), else the default's."""
    if a.db:
        return a.db
    path = a.config or "/etc/sockd.conf"
    try:
        text = configload.read_text(path)
    except ConfigError:
        if a.config:
            raise
        return A.DEFAULT_PATH
    cfg, _problems = C.read_lines(text, path)
    return cfg.accounting_database


def date_start(text, end=False):
    """The local start of the day YYYY-MM-DD or month YYYY-MM (with ``end``:
    the start of the next one).  Raises ValueError."""
    parts = [int(x) for x in text.split("-")]
    if len(parts) == 3:
        y, m, d = parts
        time.strptime(text, "%Y-%m-%d")
        fields = (y, m, d + (1 if end else 0))
    elif len(parts) == 2:
        y, m = parts
        time.strptime(text, "%Y-%m")
        fields = (y, m + (1 if end else 0), 1)
    else:
        raise ValueError(text)
    return int(time.mktime(fields + (0, 0, 0, 0, 0, -1)))


def period_bounds(text, now):
    """PERIOD -> (start, end or None, a description).  Raises ValueError."""
    t = text.lower()
    if t == "all":
        return None, None, "all time"
    if t in ("day", "today", "week", "month"):
        p = "day" if t == "today" else t
        start = T.period_start(p, now)
        return start, None, "this %s, from %s" % (p, stamp(start))
    if t == "yesterday":
        today = T.period_start("day", now)
        start = T.period_start("day", today - 1)
        return start, today, "yesterday, %s" % time.strftime("%Y-%m-%d", time.localtime(start))
    if t[-1:] in ("h", "d", "w") and t[:-1].isdigit():
        start = T.period_start(T.parse_period(t), now)
        return start, None, "the last %s, from %s" % (t, stamp(start))
    a, sep, b = t.partition("..")
    start = date_start(a)
    end = date_start(b if sep else a, end=True)
    if end <= start:
        raise ValueError(text)
    return start, end, "%s to %s" % (stamp(start), stamp(end))


def stamp(t):
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def human(n):
    """Bytes as the table shows them: 512, 1.5K, 20.0M, 3.1G (powers of 1024)."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if n < 1024 or unit == "P":
            return "%d" % n if unit == "" else "%.1f%s" % (n, unit)
        n /= 1024.0


def key_of(words):
    """The words of --reset as a key: ``user alice``, ``address 10.1.0.0/16``
    (an address or network written as the server writes it).  Raises
    ValueError."""
    kind, _, value = " ".join(words).partition(" ")
    value = value.strip()
    if kind not in KINDS or not value:
        raise ValueError("a key is KIND NAME: user NAME, address ADDRESS or CIDR, rule TAG")
    if kind == "address":
        value = T.net_text(*T.parse_net(value))
    return T.key_text(kind, value)


def sockd_accounting(argv=None, out=None):
    out = out or sys.stdout
    try:
        a = accounting_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        path = database_of(a)
    except ConfigError as exc:
        report_config_error(exc, to_stderr)
        return 1
    if a.reset:
        try:
            key = key_of(a.reset)
        except ValueError as exc:
            print("sockd-accounting: --reset: %s" % exc, file=sys.stderr)
            return 2
        try:
            store = A.Store(path, busy=5.0)
            n = store.reset(key)
            store.close()
        except (A.StoreError, sqlite3.Error) as exc:
            print("sockd-accounting: %s" % exc, file=sys.stderr)
            return 1
        print("%s: %d hourly count%s deleted; a running sockd counts it from zero within its accounting "
              "interval" % (key, n, "" if n == 1 else "s"), file=out)
        return 0
    try:
        start, end, what = period_bounds(a.period, time.time())
    except ValueError:
        print("sockd-accounting: -p: not a period: %s" % a.period, file=sys.stderr)
        return 2
    try:
        store = A.Store(path, readonly=True, busy=5.0)
        rows = store.report(start, end, a.kind)
        store.close()
    except (A.StoreError, sqlite3.Error) as exc:
        print("sockd-accounting: %s" % exc, file=sys.stderr)
        return 1
    # users, then addresses and networks, then rules; each the most first
    order = {k: i for i, k in enumerate(KINDS)}
    table = sorted(((key.partition(" ")[0], key.partition(" ")[2], up, down) for key, up, down in rows),
                   key=lambda r: (order.get(r[0], 9), -(r[2] + r[3]), r[1]))
    if a.csv:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["kind", "name", "up", "down", "total", "from", "to"])
        for kind, name, up, down in table:
            w.writerow([kind, name, up, down, up + down, stamp(start) if start is not None else "",
                        stamp(end) if end is not None else ""])
        return 0
    fmt = (lambda n: "%d" % n) if a.bytes else human
    print("%s: %s" % (path, what), file=out)
    cells = [("KIND", "NAME", "UP", "DOWN", "TOTAL")] + [
        (kind, name, fmt(up), fmt(down), fmt(up + down)) for kind, name, up, down in table]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    for c in cells:
        print("%-*s  %-*s  %*s  %*s  %*s" % (widths[0], c[0], widths[1], c[1], widths[2], c[2], widths[3], c[3],
                                              widths[4], c[4]), file=out)
    if not table:
        print("(no traffic counted in this period)", file=out)
    return 0


def main_test_sockd_conf():
    sys.exit(test_sockd_conf())


def main_sockd_passwd():
    sys.exit(sockd_passwd())


def main_sockd_accounting():
    sys.exit(sockd_accounting())
