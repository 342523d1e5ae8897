"""rfinger [-l] [-p PORT] [user]@host[@host...]

finger through socks.conf: asks the finger server (RFC 1288, port 79) of
the last host for the user (``user@a@b`` asks b for ``user@a``), and prints
the answer.  Without ``@host`` the local finger program runs instead
($ORIG_FINGER, else finger).
"""

import argparse
import os
import shutil
import sys

from . import common


def main(argv=None):
    p = argparse.ArgumentParser(prog="rfinger", description="finger through a SOCKS server, as socks.conf says")
    p.add_argument("-l", dest="long", action="store_true", help="ask for the long form (/W)")
    p.add_argument("-p", dest="port", default="finger", metavar="PORT", help="server port (default: finger, 79)")
    p.add_argument("target", nargs="?", default="", metavar="[user]@host")
    a = p.parse_args(argv)
    if "@" not in a.target:
        prog = os.environ.get("ORIG_FINGER") or shutil.which("finger")
        if not prog:
            sys.stderr.write("rfinger: no host given and no local finger program (set ORIG_FINGER)\n")
            return 1
        args = [prog] + (["-l"] if a.long else []) + ([a.target] if a.target else [])
        os.execv(prog, args)
    user, host = a.target.rsplit("@", 1)
    if not host:
        sys.stderr.write("rfinger: missing host after '@'\n")
        return 2
    return common.run_query("rfinger", host, a.port, ("/W " if a.long else "") + user, "[%s]\n" % host)


if __name__ == "__main__":
    sys.exit(main())
