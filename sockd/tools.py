"""Small administrator's commands that come with the server:

    test_sockd_conf [-i] [-I] [-B] [-C FILE] USER SRC DST PORT|SERVICE
    sockd-passwd [-c] [-D] [-i] [-C COST] FILE USER

test_sockd_conf runs a hypothetical request through the same decision as
sockd (decision.decide: the rules, the private-destination guard and the
identd matrix, with identd's answer simulated by -i, -I and -B) and prints
every line it examined and what decided; under methods that all need a
password it notes that SOCKS 4 clients are refused before the rules
(auth.socks4_allowed).  Its exit
status is the classic contract, odd as it is: 1 when the request would be
permitted, 0 when denied, 255 for a usage or configuration error.
"""

import argparse
import getpass
import os
import socket
import sys
import tempfile

from . import auth
from . import configload
from . import decision as D
from . import ident as I
from . import protocol as P
from . import passwd as PW
from . import rules as R
from . import shell
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


def main_test_sockd_conf():
    sys.exit(test_sockd_conf())


def main_sockd_passwd():
    sys.exit(sockd_passwd())
