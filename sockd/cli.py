"""The sockd command line.

    sockd [-f FILE] [-F] [-D] [-N N] [-m fork|threads] [-p PATH]
          [-i|-I] [-d LEVEL] [-V] [-ver|--version] [--inetd]

-N, -m and -p are the flags of settings (settings.SETTINGS, ``cli``): the
table gives their metavar, help and converter, and they override the
configuration file.

Without -F, the server becomes a daemon (daemonize.py) after binding its
ports, so that a port that is taken or a live pid file is reported to the
shell that started it.

A user's mistake (a bad flag, a bad configuration) ends with a message and a
non-zero status, never a traceback.
"""

import argparse
import os
import sys
import traceback

from . import __version__
from . import cache, configload, daemonize, limits, pidfile, serving
from .config import printable
from .errors import (EXIT_ERROR, EXIT_OK, EXIT_USAGE, Bad, ConfigError, Halt, PidfileError, report_config_error,
                     to_stderr)
from .log import log
from .master import Master
from .settings import SETTINGS
from .validators import listen_text

DEFAULT_CONFIG = "/etc/sockd.conf"


def build_parser():
    """The argument parser: the flags of the settings table (a setting's
    ``cli``), each checked by the setting's own converter, and the flags
    that are no setting.  Returns an argparse.ArgumentParser; its errors
    exit with status 2 (EXIT_USAGE)."""
    p = argparse.ArgumentParser(
        prog="sockd", add_help=True,
        description="SOCKS 4, 4A and 5 proxy server in the classic sockd tradition.")
    p.add_argument("-f", dest="config", metavar="FILE", default=DEFAULT_CONFIG,
                   help="configuration file (default %s)" % DEFAULT_CONFIG)
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="stay in the foreground and copy log lines to stderr")
    p.add_argument("-D", dest="detach", action="store_true",
                   help="detach and run as a daemon, even when started by init or inetd")
    for s in SETTINGS:
        if s.cli:
            p.add_argument(s.cli, dest=s.attr, metavar=s.args, type=flag_type(s),
                           help="%s; overrides '%s' in the file" % (s.doc, s.key))
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


def flag_type(setting):
    """The argparse ``type`` of a setting's flag: the text through the
    setting's ``cli_value`` (when it has one), then its converter.  The
    returned function returns the value (None: as if not given) and turns
    the converter's Bad into argparse's ArgumentTypeError, a usage error."""
    def convert(text):
        if setting.cli_value is not None:
            text = setting.cli_value(text)
            if text is None:
                return None
        try:
            return setting.convert(text)
        except Bad as exc:
            raise argparse.ArgumentTypeError("%s (near '%s')" % (exc, printable(text))) from None
    return convert


def normalise_argv(argv):
    """The classic '-ver' is one flag, not -v -e -r."""
    return ["--version" if a == "-ver" else a for a in argv]


def verify(path):
    """sockd -V: every problem and warning of the file at ``path`` on
    stderr, a summary on stdout when it is usable.  Returns EXIT_OK or
    EXIT_ERROR; blocks on the files the configuration names."""
    try:
        cfg = configload.load(path, keep=True)       # kept until the exit: no collector walks it
    except ConfigError as exc:
        report_config_error(exc, to_stderr)
        print("sockd: %s: %d problem%s" % (path, len(exc.problems), "" if len(exc.problems) == 1 else "s"),
              file=sys.stderr)
        return EXIT_ERROR
    for f, line, msg in cfg.warnings:
        print("%s:%d: warning: %s" % (f, line, msg), file=sys.stderr)
    print("%s: OK, %d rule%s, listening on %s" % (
        path, len(cfg.ruleset.rules), "" if len(cfg.ruleset.rules) == 1 else "s",
        ", ".join(listen_text(hp) for hp in cfg.listen)))
    return EXIT_OK


def main(argv=None):
    """The sockd command: ``argv`` (default sys.argv[1:]) read, then
    --version, -V, inetd mode or the stand-alone server.  Returns the exit
    status; a user's mistake never raises.  Serves until stopped."""
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

    if args.foreground and args.detach:
        print("sockd: -F and -D contradict each other", file=sys.stderr)
        return EXIT_USAGE

    inetd = args.inetd or (not args.foreground and not args.detach and serving.stdin_is_socket())
    log.stderr = args.foreground and not inetd and not stderr_is_journal()
    log.debug_level = args.debug
    # absolute: a daemon works from /, and SIGHUP reads the file again
    config_path = os.path.abspath(args.config)
    if inetd:
        return run_inetd(args, config_path)
    try:
        cfg = configload.load(config_path, keep=True)     # the server's, for as long as it serves
    except ConfigError as exc:
        # on the terminal too, unless -F copies the log lines there already
        report_config_error(exc, *([log.error] if log.stderr else [log.error, to_stderr]))
        return EXIT_ERROR
    log.configure(facility=cfg.log_facility, socket_path=cfg.log_socket)
    for f, line, msg in cfg.warnings:
        log.warning("%s:%d: warning: %s" % (f, line, msg))
    return serve(args, cfg, config_path)


def stderr_is_journal():
    """systemd's JOURNAL_STREAM names our standard error: the journal gets
    the syslog lines already, so -F does not copy them there twice."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def fail(message):
    """A start that ends: the message in the log, and on the terminal."""
    log.error(message)
    if not log.stderr:
        print("sockd: %s" % message, file=sys.stderr)
    return EXIT_ERROR


def descriptor_limits(cfg):
    """Raise the open-files limit for ``cfg`` (limits.raise_descriptors:
    the hard one as root only).  Returns (soft limit, the warning when it is
    below what ``cfg`` wants, or None)."""
    wanted = limits.descriptors_wanted(cfg)
    soft, _hard = limits.raise_descriptors(wanted)
    return soft, limits.descriptors_short(soft, wanted)


def serve(args, cfg, config_path):
    """The stand-alone server: bind, become a daemon, write the pid file,
    serve until stopped.  Returns the exit status."""
    limit, short = descriptor_limits(cfg)
    pid_path = args.pidfile or cfg.pidfile          # -p: made absolute as it was read
    overrides = {}
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.model is not None:
        overrides["model"] = args.model
    try:
        if pid_path:
            pidfile.check(pid_path)      # before detaching: the shell hears about it
        master = Master(cfg, args.ident, config_path, overrides)
        master.bind()
    except (Halt, PidfileError) as exc:
        return fail(str(exc))
    ready = None
    if not args.foreground:
        detach = daemonize.should_detach(args.foreground, args.detach)
        log.reopen()                     # no syslog socket across the fd clean-up
        ready = daemonize.daemonize(detach, master.listener_fds())
        log.reopen()
    log.notice("sockd %s starting (pid %d); open files limit %s" % (
        __version__, os.getpid(), "unlimited" if limit < 0 else limit))
    if short:
        log.warning(short)
    if pid_path:
        try:
            pidfile.write(pid_path)
        except PidfileError as exc:
            if ready is not None:
                ready.fail(str(exc))
            return fail(str(exc))
    try:
        return master.run(ready)
    except Exception as exc:            # a bug: say so in the log, not only on a closed stderr
        log.error("internal error: %s: %s" % (type(exc).__name__, exc))
        for line in traceback.format_exc().splitlines():
            log.error(line)
        if ready is not None:
            ready.fail("internal error: %s" % exc)
        return EXIT_ERROR
    finally:
        if pid_path:
            pidfile.remove(pid_path)


def run_inetd(args, config_path):
    """inetd mode: one client on standard input, with the configuration
    from the cache when it is still valid (see cache.py)."""
    cfg = cache.load(config_path)
    files = None
    if cfg is None:
        try:
            with cache.Recording() as files:
                cfg = configload.load(config_path)
        except ConfigError as exc:
            report_config_error(exc, log.error)
            return EXIT_ERROR
    log.configure(facility=cfg.log_facility, socket_path=cfg.log_socket)
    if files is None:
        log.debug("configuration from the cache for %s" % config_path)
    if args.workers is not None:
        cfg.set("workers", args.workers)
    for f, line, msg in cfg.warnings:
        log.warning("%s:%d: warning: %s" % (f, line, msg))
    if files is not None and cache.can_store(config_path):
        write_cache_aside(config_path, cfg, files)
    try:
        return serving.serve_inetd(cfg, args.ident)
    except Halt as exc:
        log.error(str(exc))
        return exc.status


def write_cache_aside(config_path, cfg, files):
    """Write the cache in a child, so that the client is not kept waiting;
    the child lets go of the client's socket (fds 0-2) at once."""
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        return
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        try:
            os.nice(10)
        except OSError:
            pass
        if cache.store(config_path, cfg, files):
            log.debug("cached the configuration of %s" % config_path)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
