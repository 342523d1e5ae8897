"""runsocks: run an unmodified Python program with socksify() done first.

    runsocks SCRIPT [ARGS...]          as python3 SCRIPT ARGS would
    runsocks -m MODULE [ARGS...]       as python3 -m MODULE ARGS would

The program sees the argv, sys.path[0] and __main__ it would see under
python3; its exit status is runsocks's.  A mistake in socks.conf or
SOCKS_SERVER stops it before the program starts, with FILE:LINE messages.
"""

import os
import runpy
import sys

from . import core
from .socksify import socksify

USAGE = "usage: runsocks SCRIPT [ARGS...]\n       runsocks -m MODULE [ARGS...]\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE) if argv else sys.stderr.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        sys.stdout.write("runsocks (sockd) %s\n" % core.__version__)
        return 0
    module = None
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(USAGE)
            return 2
        module, args = argv[1], argv[2:]
    elif argv[0].startswith("-m") and len(argv[0]) > 2:
        module, args = argv[0][2:], argv[1:]
    elif argv[0].startswith("-") and argv[0] != "-":
        sys.stderr.write("runsocks: unknown option %s\n%s" % (argv[0], USAGE))
        return 2
    else:
        script, args = argv[0], argv[1:]
        if not os.path.exists(script):
            sys.stderr.write("runsocks: can't open file '%s': No such file or directory\n" % script)
            return 2
    try:
        socksify()
    except core.SocksConfigError as exc:
        sys.stderr.write("runsocks: %s\n" % exc)
        return 1
    # What python3 would put first on sys.path: the script's directory, or
    # the current directory for -m; never the directory of this launcher.
    drop = set()
    if sys.argv and sys.argv[0]:
        drop = {os.path.dirname(os.path.realpath(sys.argv[0])), os.path.dirname(os.path.abspath(sys.argv[0]))}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "site-packages" not in here:
        drop.add(here)
    while sys.path and sys.path[0] and os.path.abspath(sys.path[0]) in drop:
        sys.path.pop(0)
    if module is not None:
        sys.argv = [module] + args
        sys.path.insert(0, os.getcwd())
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [script] + args
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
