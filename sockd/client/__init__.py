"""The client side of sockd: socks.conf, and a socket library that goes
direct, through a SOCKS server or nowhere as socks.conf says.

    from sockd.client import socksocket, socksify, SocksError

    socksify()                      # the whole program, or:
    s = socksocket()                # one socket at a time
    s.connect(("www.example.org", 80))

See socks.conf(5) and runsocks(1).
"""

from .core import (
    SocksConfigError, SocksDenied, SocksError, SocksRefused, SocksServerError,
    create_connection, route, socksocket,
)
from .socksify import socksified, socksify, unsocksify

__all__ = ["SocksConfigError", "SocksDenied", "SocksError", "SocksRefused", "SocksServerError",
           "create_connection", "route", "socksocket", "socksified", "socksify", "unsocksify"]
