"""rwhois [-h HOST] [-p PORT] QUERY...

whois (RFC 3912, port 43) through socks.conf: sends the query to the whois
server and prints the answer.  The server is -h, else $WHOIS_SERVER, else
whois.iana.org.
"""

import argparse
import os
import sys

from . import common

DEFAULT_SERVER = "whois.iana.org"


def main(argv=None):
    p = argparse.ArgumentParser(prog="rwhois", add_help=False,
                                description="whois through a SOCKS server, as socks.conf says")
    p.add_argument("-h", dest="host", metavar="HOST",
                   help="whois server (default: $WHOIS_SERVER, else %s)" % DEFAULT_SERVER)
    p.add_argument("-p", dest="port", default="whois", metavar="PORT", help="server port (default: whois, 43)")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("query", nargs="+")
    a = p.parse_args(argv)
    host = a.host or os.environ.get("WHOIS_SERVER") or DEFAULT_SERVER
    return common.run_query("rwhois", host, a.port, " ".join(a.query))


if __name__ == "__main__":
    sys.exit(main())
