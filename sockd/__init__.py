"""sockd: the classic SOCKS server, in Python."""

__version__ = "4.5.0"
