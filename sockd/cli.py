"""The sockd command line.

    sockd [-f FILE] [-F] [-D] [-p PIDFILE] [-N WORKERS] [-m fork|threads]
          [-i|-I] [-d LEVEL] [-V] [-ver|--version] [--inetd]

A user's mistake (a bad flag, a bad configuration) ends with a message and a
non-zero status, never a traceback.
"""

import argparse
import os
import sys

from . import __version__
from . import config as C
from .log import log

DEFAULT_CONFIG = "/etc/sockd.conf"

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_parser():
    p = argparse.ArgumentParser(
        prog="sockd", add_help=True,
        description="SOCKS 4, 4A and 5 proxy server in the classic sockd tradition.")
    p.add_argument("-f", dest="config", metavar="FILE", default=DEFAULT_CONFIG,
                   help="configuration file (default %s)" % DEFAULT_CONFIG)
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="stay in the foreground and copy log lines to stderr")
    p.add_argument("-D", dest="detach", action="store_true", help="detach and run as a daemon")
    p.add_argument("-p", dest="pidfile", metavar="PIDFILE", help="write the master's pid to PIDFILE")
    p.add_argument("-N", dest="workers", metavar="WORKERS", type=int,
                   help="worker processes (default: the number of CPUs)")
    p.add_argument("-m", dest="model", metavar="MODEL", choices=("fork", "threads"),
                   help="process model: threads (pre-forked workers) or fork (a child per client)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-i", dest="ident", action="store_const", const="i",
                   help="identd checks, lenient: refuse only when identd names another user")
    g.add_argument("-I", dest="ident", action="store_const", const="I",
                   help="identd checks, strict: also refuse when identd cannot be reached")
    p.add_argument("-d", dest="debug", metavar="LEVEL", type=int, default=0, help="debug level (0: off)")
    p.add_argument("-V", dest="verify", action="store_true",
                   help="verify the configuration file and exit")
    p.add_argument("--version", "-ver", dest="version", action="store_true",
                   help="print the version and exit")
    p.add_argument("--inetd", dest="inetd", action="store_true",
                   help="serve the one client on standard input (started by inetd)")
    return p


def normalise_argv(argv):
    """The classic '-ver' is one flag, not -v -e -r."""
    return ["--version" if a == "-ver" else a for a in argv]


def verify(path):
    """sockd -V: list every problem; exit 0 when there is none."""
    try:
        cfg = C.load(path)
    except C.ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print("sockd: %s: %d problem%s" % (path, len(exc.problems), "" if len(exc.problems) == 1 else "s"),
              file=sys.stderr)
        return EXIT_ERROR
    for f, line, msg in cfg.warnings:
        print("%s:%d: warning: %s" % (f, line, msg), file=sys.stderr)
    print("%s: OK, %d rule%s, listening on %s" % (
        path, len(cfg.ruleset.rules), "" if len(cfg.ruleset.rules) == 1 else "s",
        ", ".join("%s:%d" % hp if ":" not in hp[0] else "[%s]:%d" % hp for hp in cfg.listen)))
    return EXIT_OK


def main(argv=None):
    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        print("sockd %s: SOCKS 4, 4A and 5 proxy server (CONNECT); multi-homed: no" % __version__)
        return EXIT_OK
    if args.verify:
        return verify(args.config)
    if args.workers is not None and not 0 <= args.workers <= 256:
        print("sockd: -N: expected 0 to 256 workers", file=sys.stderr)
        return EXIT_USAGE

    from . import server
    inetd = args.inetd or (not args.foreground and server.stdin_is_socket())
    log.stderr = args.foreground and not inetd
    log.debug_level = args.debug
    try:
        cfg = C.load(args.config)
    except C.ConfigError as exc:
        for line in exc.lines():
            log.error(line)
            if not log.stderr:
                print(line, file=sys.stderr)
        return EXIT_ERROR
    log.configure(facility=cfg.log_facility, socket_path=cfg.log_socket)
    if args.workers is not None:
        cfg.set("workers", args.workers)
    if args.model is not None:
        cfg.set("model", args.model)
    for f, line, msg in cfg.warnings:
        log.warning("%s:%d: warning: %s" % (f, line, msg))
    if inetd:
        try:
            return server.serve_inetd(cfg, args.ident)
        except server.Halt as exc:
            log.error(str(exc))
            return exc.status
    log.notice("sockd %s starting (pid %d)" % (__version__, os.getpid()))
    return server.main_server(cfg, args.ident)


if __name__ == "__main__":
    sys.exit(main())
