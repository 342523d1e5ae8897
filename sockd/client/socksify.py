"""socksify(): make a whole Python program use socks.conf, the way the
classic package recompiled C programs with -Dconnect=Rconnect.

It replaces ``socket.socket`` with ``socksocket`` and
``socket.create_connection`` with the library's version, so that
everything built on them (http.client, urllib, ftplib, smtplib, asyncio's
sockets...) is routed.  Modules that kept their own reference to the real
class before the call (``from socket import socket``) are not affected.
"""

import socket
import ssl  # noqa: F401  (before the patch: ssl.SSLSocket must derive from the real class)

from . import core


def socksify(check=True):
    """Patch the socket module.  With ``check``, read socks.conf and
    SOCKS_SERVER now, so that a mistake is reported at start-up (raises
    SocksConfigError) rather than at the first connection.  Prints the
    banner when SOCKS_BANNER is set.  Idempotent."""
    core.start()
    if check:
        core.check_config()
    socket.socket = core.socksocket
    socket.create_connection = core.create_connection


def unsocksify():
    """Undo socksify()."""
    socket.socket = core._socket
    socket.create_connection = core._create_connection


def socksified():
    return socket.socket is core.socksocket
