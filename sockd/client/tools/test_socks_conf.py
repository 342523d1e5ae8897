"""test_socks_conf [-C FILE] USER DST PORT|SERVICE

Shows what socks.conf decides for one connection: every line examined, the
line that decides, and the decision (direct, via which servers, or deny).
Exit status, as the classic checkers: 1 when the connection is allowed
(direct or through a server), 0 when it is denied, 2 for a usage or
configuration error.  The decision is made by the library's own code.
"""

import argparse
import sys

from ... import config as C
from .. import conf as K
from .. import core

EXIT_ALLOWED, EXIT_DENIED, EXIT_ERROR = 1, 0, 2


def parser():
    p = argparse.ArgumentParser(prog="test_socks_conf",
                                description="Show what socks.conf decides for one connection.")
    p.add_argument("-C", dest="conf", metavar="FILE",
                   help="the socks.conf to test (default: $SOCKS_CONF, else %s)" % K.DEFAULT_PATH)
    p.add_argument("user", help="the user making the connection")
    p.add_argument("dst", help="destination: an address or a host name")
    p.add_argument("port", help="destination port: a number or a service name")
    return p


def main(argv=None):
    p = parser()
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return EXIT_ERROR if exc.code else 0
    out = sys.stdout
    path = a.conf or K.conf_path()
    try:
        port = C.to_port(a.port)
    except C.Bad as exc:
        sys.stderr.write("test_socks_conf: %s: '%s'\n" % (exc, C.printable(a.port)))
        return EXIT_ERROR
    try:
        conf = K.load(path)
        defaults = K.env_servers()
    except K.ConfError as exc:
        sys.stderr.write("%s\n" % exc)
        return EXIT_ERROR
    host, ip, names, dst = core.lookup(a.dst, port, conf)
    out.write("USER:%s, DST:%s%s, PORT:%d\n" % (a.user, host, " (%s)" % ip if ip and ip != host else "", port))
    if names and names != (host.lower(),):
        out.write("DST names: %s\n" % ", ".join(names))
    for w in conf.warnings if conf else ():
        out.write("Warning: %s:%d: %s\n" % w)
    trace = []
    d = K.decide(conf, a.user, dst, port, names, defaults, trace, path)
    for e in trace:
        out.write("Line %d: %s%s\n" % (e.line, e.text, " : %s" % e.command if e.command else ""))
    if d.action == K.DENY and d.entry is None:
        out.write("*** No match with any line. Access denied.\n")
    elif d.action == K.DENY:
        out.write("*** Denied: %s\n" % d.reason)
    elif d.action == K.DIRECT:
        out.write("*** Direct: %s\n" % d.reason)
    else:
        out.write("*** Via sockd at %s (%s:%d)\n" % (", ".join(map(K.fmt_server, d.servers)),
                                                      d.entry.file, d.entry.line))
    return EXIT_ALLOWED if d.allowed else EXIT_DENIED


if __name__ == "__main__":
    sys.exit(main())
