"""Logging: RFC 3164 datagrams to a syslog socket of our choosing, a copy
on stderr in the foreground, printable ASCII only, and never a stall."""

import os
import re
import socket

import pytest

from sockd import log as L
from sockd.validators import FACILITIES


@pytest.fixture
def syslog(tmp_path):
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def received(sock):
    return sock.recv(65536).decode()


def test_clean_keeps_printable_ascii_only():
    assert L.clean("plain text") == "plain text"
    assert L.clean("new\nline\x1b[31m") == "new?line?[31m"
    assert L.clean("é") == "??"                          # two UTF-8 bytes
    assert L.clean(b"\xff\x00ok") == "??ok"
    assert L.clean("x" * 3000) == "x" * 2048


def test_datagram_format_and_priority(syslog):
    path, sock = syslog
    log = L.Logger(facility="local3", socket_path=path)
    log.notice("hello")
    m = re.match(r"<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) sockd\[(\d+)\]: hello$", received(sock))
    assert m and int(m.group(1)) == FACILITIES["local3"] * 8 + L.NOTICE and int(m.group(3)) == os.getpid()
    log.error("bad\nthing")
    assert received(sock).endswith("sockd[%d]: bad?thing" % os.getpid())


def test_debug_only_with_a_debug_level(syslog):
    path, sock = syslog
    log = L.Logger(socket_path=path)
    log.debug("hidden")
    log.info("shown")
    assert received(sock).endswith(": shown")
    log.debug_level = 1
    log.debug("now shown")
    assert received(sock).startswith("<%d>" % (3 * 8 + L.DEBUG))


def test_configure_facility_and_socket(syslog, tmp_path):
    path, sock = syslog
    log = L.Logger(socket_path=str(tmp_path / "elsewhere"))
    log.warning("lost")                                   # no such socket: nothing raised
    log.configure(facility="auth", socket_path=path)
    log.warning("found")
    assert received(sock).startswith("<%d>" % (FACILITIES["auth"] * 8 + L.WARNING))
    log.configure(facility="no-such-facility")            # the parser refuses those; keep the last
    log.warning("again")
    assert received(sock).startswith("<%d>" % (FACILITIES["auth"] * 8 + L.WARNING))


def test_stderr_copy_in_the_foreground(capfd, tmp_path):
    log = L.Logger(socket_path=str(tmp_path / "none"), stderr=True)
    log.error("on the terminal")
    err = capfd.readouterr().err
    assert re.match(r"\w{3} [ \d]\d \d\d:\d\d:\d\d sockd\[\d+\]: on the terminal\n$", err)


def test_a_full_socket_drops_rather_than_blocks(syslog):
    path, sock = syslog
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    log = L.Logger(socket_path=path)
    for i in range(2000):
        log.info("line %d %s" % (i, "x" * 200))
    assert log.dropped > 0


def test_reopen_forgets_the_socket(syslog):
    path, sock = syslog
    log = L.Logger(socket_path=path)
    log.info("one")
    assert log._sock is not None
    log.reopen()
    assert log._sock is None
    log.info("two")
    assert received(sock).endswith(": one") and received(sock).endswith(": two")
