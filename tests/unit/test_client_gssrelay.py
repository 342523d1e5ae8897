"""sockd/client/gssrelay.py: the plaintext side of a GSS-API protected
connection.  The Splice (pure) with the stand-in mechanism of gssfake,
frame by frame: both directions, the bounds, the half-closes; then the
Relay thread on real socketpairs (the "server" end is a socketpair too,
speaking gss1961 frames with the stand-in): byte-exact both ways at once,
half-close each way, the program closing, a forged frame, the process
exiting with data still in the pair, and fork()."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sockd import gss1961 as G
from sockd.client import gssrelay
from sockd.client.gssrelay import LIMIT, Relay, Splice
from sockd.protocol import ProtocolError

from gssfake import fake_protection, fake_wrap, frame

WAIT = 5.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the Splice (pure) ----------------------------------------------------------------------------

def test_what_the_program_writes_goes_out_sealed_in_tokens_of_one_chunk():
    sp = Splice(fake_protection(chunk=100))
    assert sp.app_read_size == 100
    sp.from_app(b"a" * 250)
    server = fake_protection(chunk=100)
    wire = bytes(sp.to_net)
    assert server.feed(wire) == b"a" * 250
    assert wire.count(b"\x01\x03") >= 3 and b"a" * 10 not in wire
    sp.sent_net(len(wire))
    assert not sp.want_write_net() and sp.bytes_out == 250


def test_what_the_server_sends_is_opened_across_any_split():
    server = fake_protection(chunk=7)
    wire = server.seal(b"hello, program, in pieces")
    sp = Splice(fake_protection(), early=b">")
    for i in range(len(wire)):
        sp.from_net(wire[i:i + 1])
    assert bytes(sp.to_app) == b">hello, program, in pieces" and sp.bytes_in == 26
    sp.sent_app(1)
    assert bytes(sp.to_app) == b"hello, program, in pieces"


def test_reading_pauses_while_a_direction_holds_its_limit():
    sp = Splice(fake_protection(chunk=65000))
    assert sp.want_read_app() and sp.want_read_net()
    while len(sp.to_net) < LIMIT:
        sp.from_app(b"x" * 65000)
    assert not sp.want_read_app() and sp.want_write_net()
    sp.sent_net(len(sp.to_net))
    assert sp.want_read_app()
    server = fake_protection(chunk=65000)
    while len(sp.to_app) < LIMIT:
        sp.from_net(server.seal(b"y" * 65000))
    assert not sp.want_read_net() and sp.want_write_app()


def test_the_programs_end_of_file_goes_out_after_what_it_wrote():
    sp = Splice(fake_protection())
    sp.from_app(b"last words")
    sp.from_app(b"")
    assert sp.app_eof and not sp.want_read_app()
    assert not sp.shut_net_now()             # "last words" still waits
    sp.sent_net(len(sp.to_net))
    assert sp.shut_net_now() and not sp.shut_net_now()     # once
    assert not sp.done()


def test_the_servers_end_of_file_goes_to_the_program_after_what_it_sent():
    sp = Splice(fake_protection())
    sp.from_net(fake_protection().seal(b"answer"))
    sp.from_net(b"")
    assert not sp.shut_app_now()
    sp.sent_app(6)
    assert sp.shut_app_now() and not sp.shut_app_now()
    sp.from_app(b"")
    assert sp.shut_net_now() and sp.done()


def test_a_server_that_ends_inside_a_frame_is_an_error():
    sp = Splice(fake_protection())
    sp.from_net(fake_protection().seal(b"cut short")[:-2])
    with pytest.raises(ProtocolError, match="inside a GSS-API frame"):
        sp.from_net(b"")


@pytest.mark.parametrize("wire", [frame(3, b"forged"), frame(1, b"ctx"), G.ABORT])
def test_frames_that_are_not_protected_data_are_errors(wire):
    with pytest.raises(ProtocolError):
        Splice(fake_protection()).from_net(wire)


def test_hangups_drop_what_can_no_longer_be_delivered():
    sp = Splice(fake_protection())
    sp.from_net(fake_protection().seal(b"nobody reads this"))
    sp.app_hangup()
    assert not sp.want_write_app() and not sp.to_app and sp.app_shut
    sp.from_app(b"")
    assert sp.shut_net_now() and sp.done()
    sp = Splice(fake_protection())
    sp.from_app(b"nobody takes this")
    sp.net_hangup()
    assert not sp.want_write_net() and sp.net_shut


# --- the Relay thread, on socketpairs ---------------------------------------------------------------

class Bed:
    """A relay between a program end (``prog``) and a server end
    (``srv``, with its own Protection ``sp``), all real sockets."""

    def __init__(self, chunk=16000, early=b""):
        self.srv, net = socket.socketpair()
        self.srv.settimeout(WAIT)
        self.sp = fake_protection(chunk=chunk)
        self.prog, self.relay = gssrelay.start(net, fake_protection(chunk=chunk), early, "the test server")
        self.prog.settimeout(WAIT)

    def server_recv_all(self):
        out = b""
        while True:
            data = self.srv.recv(65536)
            if not data:
                return out
            out += self.sp.feed(data)

    def ended(self):
        self.relay.thread.join(WAIT)
        return not self.relay.thread.is_alive() and self.relay.closed

    def close(self):
        for s in (self.prog, self.srv):
            s.close()
        self.relay.thread.join(WAIT)


@pytest.fixture
def bed():
    made = []

    def make(**kw):
        b = Bed(**kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()
        assert not b.relay.thread.is_alive()


def recv_all(sock):
    out = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        out += data


def test_byte_exact_both_ways_at_once(bed):
    b = bed(chunk=16000)
    up, down = os.urandom(3 << 20), os.urandom(3 << 20)
    got = {}

    def server():
        def send():
            b.srv.sendall(b.sp.seal(down))
            b.srv.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        got["up"] = b.server_recv_all()
        t.join(WAIT)
    ts = threading.Thread(target=server)
    ts.start()
    tp = threading.Thread(target=lambda: (b.prog.sendall(up), b.prog.shutdown(socket.SHUT_WR)))
    tp.start()
    got["down"] = recv_all(b.prog)
    tp.join(WAIT)
    ts.join(WAIT)
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["down"]).digest() == hashlib.sha256(down).digest()
    assert b.ended()                            # both ends of file passed on: the relay is done
    assert b.relay.splice.bytes_out == len(up) and b.relay.splice.bytes_in == len(down)


def test_the_early_plaintext_comes_first(bed):
    b = bed(early=b"already here; ")
    b.srv.sendall(b.sp.seal(b"then this"))
    b.srv.shutdown(socket.SHUT_WR)
    assert recv_all(b.prog) == b"already here; then this"


def test_a_half_close_from_the_program_reaches_the_server_and_the_answer_still_comes(bed):
    b = bed()
    b.prog.sendall(b"question")
    b.prog.shutdown(socket.SHUT_WR)
    assert b.server_recv_all() == b"question"           # the server saw our end of file
    b.srv.sendall(b.sp.seal(b"answer after your end of file"))
    b.srv.shutdown(socket.SHUT_WR)
    assert recv_all(b.prog) == b"answer after your end of file"
    assert b.ended()


def test_a_half_close_from_the_server_reaches_the_program_and_it_may_still_write(bed):
    b = bed()
    b.srv.sendall(b.sp.seal(b"banner"))
    b.srv.shutdown(socket.SHUT_WR)
    assert recv_all(b.prog) == b"banner"
    b.prog.sendall(b"still talking")
    b.prog.shutdown(socket.SHUT_WR)
    assert b.server_recv_all() == b"still talking"
    assert b.ended()


def test_the_program_closing_its_socket_ends_the_connection_even_if_the_server_stays_silent(bed):
    b = bed()
    b.prog.sendall(b"bye")
    b.prog.close()
    assert b.server_recv_all() == b"bye"                 # flushed, then the end of file
    assert b.ended()


def test_the_server_going_away_while_the_program_writes(bed):
    b = bed()
    b.srv.close()
    with pytest.raises(OSError):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            b.prog.sendall(b"x" * 65536)
    assert b.ended()


def test_a_forged_frame_ends_the_connection_and_is_logged(bed, caplog):
    b = bed()
    with caplog.at_level("WARNING", logger="sockd.client"):
        b.srv.sendall(frame(3, b"forged"))
        assert recv_all(b.prog) == b""
        assert b.ended()
    assert "GSS-API protected connection with the test server ended: GSS-API message does not unwrap" in caplog.text
    assert b.relay.error.startswith("GSS-API message does not unwrap")


def test_a_program_that_does_not_read_holds_the_server_back_not_the_memory(bed):
    b = bed(chunk=65000)
    block = b.sp.seal(b"z" * 65000)
    stop = threading.Event()

    def flood():
        try:
            while not stop.is_set():
                b.srv.sendall(block)
        except OSError:
            pass
    t = threading.Thread(target=flood)
    t.start()
    time.sleep(0.5)                             # the program reads nothing meanwhile
    held = len(b.relay.splice.to_app)
    stop.set()
    b.prog.close()
    assert b.ended()
    t.join(WAIT)
    # the relay stopped reading: what it kept is bounded by its limit plus one read
    assert 0 < held < LIMIT + gssrelay.NET_READ


SCRIPT = r"""
import os, socket, sys, time
sys.path[:0] = [%(root)r, %(tests)r]
from sockd.client import gssrelay
from gssfake import fake_protection
net = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
prog, relay = gssrelay.start(net, fake_protection(chunk=16000))
mode = sys.argv[2]
if mode == "exit":
    prog.sendall(b"q" * (1 << 20))      # still in the socketpair when the interpreter exits
    sys.exit(0)
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        prog.close()                   # a child that does not use the connection,
        time.sleep(3)                  # and outlives what follows
        os._exit(0)
    prog.settimeout(5)
    start = time.monotonic()
    got = prog.recv(100)               # the server sends a forged frame: the relay gives up
    print("program got %%r after %%.1f s" %% (got, time.monotonic() - start), flush=True)
    relay.thread.join(5)
    print("relay ended" if not relay.thread.is_alive() else "relay still running", flush=True)
    os.waitpid(pid, 0)
"""


def run_script(tmp_path, mode, send=b""):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(WAIT)
    path = tmp_path / "relay_script.py"
    path.write_text(SCRIPT % {"root": ROOT, "tests": os.path.dirname(os.path.abspath(__file__))})
    proc = subprocess.Popen([sys.executable, str(path), str(ls.getsockname()[1]), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, _ = ls.accept()
        conn.settimeout(WAIT)
        conn.sendall(send)
        prot = fake_protection(chunk=16000)
        got, start = b"", time.monotonic()
        while True:
            data = conn.recv(65536)
            if not data:
                break
            got += data if send else prot.feed(data)
        took = time.monotonic() - start
        out, err = proc.communicate(timeout=WAIT + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ls.close()
    return got, took, proc.returncode, out.decode(), err.decode()


def test_at_exit_what_the_program_wrote_still_reaches_the_server(tmp_path):
    got, took, rc, out, err = run_script(tmp_path, "exit")
    assert rc == 0, err
    assert got == b"q" * (1 << 20)


@pytest.mark.serial
def test_a_forked_child_does_not_keep_the_connection_open(tmp_path):
    """The relay lives in the parent; a child holds copies of every
    descriptor.  When the relay gives up, both the program and the server
    must see the end at once, not when the child exits."""
    got, took, rc, out, err = run_script(tmp_path, "fork", send=frame(3, b"forged"))
    assert rc == 0, err
    assert got == b"" and took < 2.5, "the server's end of file waited for the child (%.1f s)" % took
    assert "program got b'' after 0." in out and "relay ended" in out, out


def test_sealing_is_not_the_plaintext(bed):
    b = bed()
    b.prog.sendall(b"secret words")
    b.prog.shutdown(socket.SHUT_WR)
    wire = b""
    while True:
        data = b.srv.recv(65536)
        if not data:
            break
        wire += data
    assert b"secret" not in wire and wire == frame(3, fake_wrap(b"secret words"))


def test_a_message_that_cannot_be_sealed_ends_the_connection_and_is_logged(caplog):
    def refuse(data):
        raise ProtocolError("GSS-API message cannot be sealed: fake")
    srv, net = socket.socketpair()
    srv.settimeout(WAIT)
    prog, relay = gssrelay.start(net, G.Protection(refuse, fake_protection().unwrap, 2, 1000), b"", "the test server")
    prog.settimeout(WAIT)
    try:
        with caplog.at_level("WARNING", logger="sockd.client"):
            prog.sendall(b"anything")
            assert recv_all(prog) == b"" and srv.recv(100) == b""      # both ends see the end
            relay.thread.join(WAIT)
        assert not relay.thread.is_alive()
        assert "ended: GSS-API message cannot be sealed: fake" in caplog.text
    finally:
        prog.close()
        srv.close()
