"""sockd.relay: bytes both ways between a client and its destination.

A real Relay on a real sockd.loop.Loop between two loopback TCP
connections; the test's ends (the client application and the destination)
are peers on the same loop, and the relay's owner is a small fake with
the one method the relay asks for, close().  Checked: data both ways and
byte counts, early data, half-close passed on only after pending data,
back-pressure (at most one buffer pending, the sender's EPOLLIN off, in
the relay's own masks and in the kernel's registration), resets, and the
end of the relay once both directions are done.  The Budget shared by the
relays of a process: what they keep is counted and given back, never goes
past the cap, and a relay over it moves data lean (nothing kept, the
sender paused while its receiver is full, no spinning) and goes back to
the usual way by itself.  Splicing: past a direction's first 64 KiB the
bytes move with splice(2) through a pipe of the process's pool, intact and
counted; a slow receiver leaves its pipe counted in the budget until it
drains (release closes it); urgent data still arrives in line; with
``relay splice no``, or with no descriptor left for a pipe, every byte is
copied.
"""

import gc
import hashlib
import os
import socket

import pytest

from sockd import gss1961 as G
from sockd import relay as RL
from sockd.loop import EPOLLIN, EPOLLOUT

from loopkit import epoll_masks, run_for, run_until, watched


class Owner:
    """The relay's owner: it asks for close() and nothing else; closing, the
    owner releases the relay, as the session does."""

    def __init__(self):
        self.closed = 0
        self.relay = None

    def close(self):
        self.closed += 1
        self.relay.release()


def make(loop, net, early=b"", bufsize=None, relay_buf=1 << 16, read_client=True, read_remote=True, budget=None,
         buf=None):
    """(relay, owner, client application peer, destination peer)."""
    app, c = net.tcp_pair(bufsize=bufsize)
    r, dest = net.tcp_pair(bufsize=bufsize)
    c.setblocking(False)
    r.setblocking(False)
    owner = Owner()
    buf = buf if buf is not None else bytearray(relay_buf)
    relay = owner.relay = RL.Relay(owner, loop, buf, memoryview(buf), c, r, budget)
    client = net.peer(app, read=read_client)
    remote = net.peer(dest, read=read_remote)
    relay.start(-1, -1, early)
    return relay, owner, client, remote


def kernel_agrees(loop, relay):
    """The relay's idea of each socket's mask is what epoll has."""
    masks = epoll_masks(loop)
    for fd, mask in ((relay.cfd, relay.cmask), (relay.rfd, relay.rmask)):
        if mask < 0:
            assert fd not in masks and fd not in loop.handlers
        else:
            assert masks[fd] == mask
    return True


def test_bytes_move_both_ways_and_are_counted(loop, net):
    relay, owner, client, remote = make(loop, net)
    assert kernel_agrees(loop, relay)
    assert relay.cmask == EPOLLIN and relay.rmask == EPOLLIN
    client.write(b"hello")
    assert run_until(loop, lambda: remote.data == b"hello")
    remote.write(b"world!")
    assert run_until(loop, lambda: client.data == b"world!")
    assert (relay.n_cr, relay.n_rc) == (5, 6)
    assert relay.last == loop.now or relay.last <= loop.now
    assert owner.closed == 0 and kernel_agrees(loop, relay)


def test_early_data_goes_first_and_is_counted(loop, net):
    relay, owner, client, remote = make(loop, net, early=b"early:")
    client.write(b"then")
    assert run_until(loop, lambda: remote.data == b"early:then")
    assert relay.n_cr == 10


def test_a_half_close_is_passed_on_and_the_other_way_goes_on(loop, net):
    relay, owner, client, remote = make(loop, net)
    client.write(b"question", shutdown=True)
    assert run_until(loop, lambda: remote.eof)
    assert remote.data == b"question"
    assert (relay.eof_c, relay.shut_r, relay.shut_c) == (True, True, False)
    assert owner.closed == 0
    remote.write(b"a long answer " * 1000)
    assert run_until(loop, lambda: len(client.data) == 14000)
    assert owner.closed == 0 and not client.eof
    remote.shutdown()
    assert run_until(loop, lambda: client.eof and owner.closed)
    assert owner.closed == 1 and relay.shut_c
    assert relay.cfd not in watched(loop) and relay.rfd not in watched(loop)


def test_the_half_close_from_the_remote_is_passed_on_too(loop, net):
    relay, owner, client, remote = make(loop, net)
    remote.write(b"banner\r\n", shutdown=True)
    assert run_until(loop, lambda: client.eof)
    assert client.data == b"banner\r\n" and owner.closed == 0
    client.write(b"QUIT\r\n", shutdown=True)
    assert run_until(loop, lambda: remote.eof and owner.closed)
    assert remote.data == b"QUIT\r\n"


def test_the_relay_ends_once_when_both_directions_are_done(loop, net):
    relay, owner, client, remote = make(loop, net)
    client.write(b"a", shutdown=True)
    remote.write(b"b", shutdown=True)
    assert run_until(loop, lambda: owner.closed)
    run_for(loop, 0.02)
    assert owner.closed == 1
    assert (client.data, remote.data) == (b"b", b"a") and client.eof and remote.eof


@pytest.mark.parametrize("direction", ["client to remote", "remote to client"])
def test_a_slow_receiver_holds_back_the_sender(loop, net, direction):
    """The receiver does not read: the relay keeps at most one buffer of
    what it could not deliver, stops reading the sender (TCP then pushes
    back on it), and passes the sender's EOF on only after delivering
    everything."""
    upstream = direction == "client to remote"
    relay, owner, client, remote = make(loop, net, bufsize=4096, relay_buf=16384,
                                        read_client=upstream, read_remote=not upstream)
    sender, receiver = (client, remote) if upstream else (remote, client)
    data = os.urandom(4 << 20)
    sender.write(data, shutdown=True)

    def pend():
        return relay.pend_cr if upstream else relay.pend_rc
    assert run_until(loop, lambda: pend() is not None and sender.pending)
    run_for(loop, 0.02)
    moved = relay.n_cr if upstream else relay.n_rc
    assert 0 < len(pend()) <= 16384
    sender_mask, receiver_mask = (relay.cmask, relay.rmask) if upstream else (relay.rmask, relay.cmask)
    assert not sender_mask & EPOLLIN and receiver_mask & EPOLLOUT
    assert kernel_agrees(loop, relay)
    assert not (relay.shut_r if upstream else relay.shut_c)
    run_for(loop, 0.02)
    assert (relay.n_cr if upstream else relay.n_rc) == moved      # the sender is not read meanwhile
    receiver.resume()
    assert run_until(loop, lambda: receiver.eof, timeout=5)
    assert len(receiver.data) == len(data)
    assert hashlib.sha256(receiver.data).digest() == hashlib.sha256(data).digest()
    assert (relay.n_cr if upstream else relay.n_rc) == len(data)
    assert pend() is None and owner.closed == 0


def test_early_data_the_remote_cannot_take_waits_and_holds_the_client(loop, net):
    data = os.urandom(1 << 20)
    relay, owner, client, remote = make(loop, net, early=data, bufsize=4096, read_remote=False)
    assert relay.pend_cr is not None and not relay.cmask & EPOLLIN and relay.rmask & EPOLLOUT
    assert kernel_agrees(loop, relay)
    client.write(b"after")
    remote.resume()
    assert run_until(loop, lambda: len(remote.data) == len(data) + 5, timeout=5)
    assert bytes(remote.data) == data + b"after"


def test_a_hang_up_while_the_clients_data_waits_still_delivers_it(loop, net):
    """The client's socket is not read while its data waits for the remote;
    its hang-up is put aside (the socket unregistered, not spinning) and
    its last bytes and EOF are delivered once the remote takes data again."""
    early = os.urandom(1 << 20)
    relay, owner, client, remote = make(loop, net, early=early, bufsize=4096, read_remote=False)
    remote.shutdown()                                # the remote has said all: the client gets EOF
    assert run_until(loop, lambda: client.eof and relay.shut_c)
    client.sock.send(b"tail")
    client.close()                                   # both ways closed now: EPOLLHUP on the relay's socket
    assert run_until(loop, lambda: relay.cmask == -1)
    assert relay.cfd not in watched(loop) and owner.closed == 0 and relay.pend_cr is not None
    remote.resume()
    assert run_until(loop, lambda: remote.eof and owner.closed)
    assert bytes(remote.data) == early + b"tail" and owner.closed == 1


@pytest.mark.parametrize("side", ["client", "remote"])
def test_a_reset_ends_the_relay(loop, net, side):
    relay, owner, client, remote = make(loop, net)
    client.write(b"x")
    assert run_until(loop, lambda: remote.data)
    (client if side == "client" else remote).reset()
    assert run_until(loop, lambda: owner.closed)
    assert owner.closed == 1
    assert relay.cfd not in watched(loop) and relay.rfd not in watched(loop)


def test_a_reset_from_a_receiver_that_holds_up_data_ends_the_relay(loop, net):
    relay, owner, client, remote = make(loop, net, bufsize=4096, relay_buf=16384, read_remote=False)
    client.write(os.urandom(2 << 20))
    assert run_until(loop, lambda: relay.pend_cr is not None)
    remote.reset()
    assert run_until(loop, lambda: owner.closed)
    assert relay.pend_cr is None


def test_writing_to_a_closed_remote_ends_the_relay(loop, net):
    relay, owner, client, remote = make(loop, net)
    remote.close()                                   # a full close, no reset: our next send gets one
    client.write(b"are you there?")
    run_until(loop, lambda: owner.closed)
    client.write(b"hello?")
    assert run_until(loop, lambda: owner.closed)
    assert owner.closed == 1


def test_start_takes_over_registered_sockets(loop, net):
    """Sockets already on the loop (the session's client socket, the
    connector's remote) keep their registration: the relay rebinds them."""
    app, c = net.tcp_pair()
    r, dest = net.tcp_pair()
    c.setblocking(False)
    r.setblocking(False)

    class Before:
        def on_event(self, ev):
            raise AssertionError("not the relay")

        def close(self):
            pass
    before = Before()
    loop.add(c.fileno(), EPOLLIN, before.on_event)
    loop.add(r.fileno(), EPOLLOUT, before.on_event)
    owner = Owner()
    buf = bytearray(4096)
    relay = owner.relay = RL.Relay(owner, loop, buf, memoryview(buf), c, r)
    relay.start(EPOLLIN, EPOLLOUT)
    assert loop.handlers[c.fileno()] == relay.on_client and loop.handlers[r.fileno()] == relay.on_remote
    assert (relay.cmask, relay.rmask) == (EPOLLIN, EPOLLIN) and kernel_agrees(loop, relay)
    remote = net.peer(dest)
    app.send(b"ping")
    assert run_until(loop, lambda: remote.data == b"ping")


def test_release_stops_hearing_both_sockets_drops_what_waits_and_the_owner(loop, net):
    relay, owner, client, remote = make(loop, net, early=os.urandom(1 << 20), bufsize=4096, read_remote=False)
    assert relay.pend_cr is not None
    relay.release()
    assert relay.pend_cr is None and relay.pend_rc is None
    assert relay.cfd not in watched(loop) and relay.rfd not in watched(loop)
    assert relay.owner is None                       # no cycle with the session that keeps it
    relay.release()                                  # twice is harmless


def test_close_is_the_error_handlers_and_ends_the_owner(loop, net):
    relay, owner, client, remote = make(loop, net)
    relay.close()
    assert owner.closed == 1 and relay.owner is None
    assert relay.cfd not in watched(loop) and relay.rfd not in watched(loop)
    relay.close()                                    # once released, nothing more
    assert owner.closed == 1


def test_socket_options_for_relayed_sockets(net):
    a, b = net.tcp_pair()
    RL.set_socket_options(a)
    assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    u = net.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    RL.set_socket_options(u)                         # not TCP: quietly nothing


# --- the budget: what the relays of a process keep in all -----------------------------------------

def held_by(*relays):
    return sum(len(d) for r in relays for d in (r.pend_cr, r.pend_rc) if d is not None)


def test_what_is_kept_is_counted_and_given_back(loop, net):
    budget = RL.Budget(1 << 30)
    relay, owner, client, remote = make(loop, net, bufsize=4096, relay_buf=16384, read_client=False,
                                        budget=budget)
    data = os.urandom(1 << 20)
    remote.write(data)
    assert run_until(loop, lambda: relay.pend_rc)
    assert budget.held == len(relay.pend_rc) > 0
    client.resume()
    assert run_until(loop, lambda: len(client.data) == len(data), timeout=5)
    assert bytes(client.data) == data and budget.held == 0


def test_release_gives_back_what_waits(loop, net):
    budget = RL.Budget(1 << 30)
    relay, owner, client, remote = make(loop, net, early=os.urandom(1 << 20), bufsize=4096, read_remote=False,
                                        budget=budget)
    assert budget.held == len(relay.pend_cr) > 0          # early data is counted, as kept data is
    relay.release()
    assert budget.held == 0


def test_early_data_is_counted_even_past_the_cap(loop, net):
    """It is in memory already (the session kept it): counting it makes the
    other relays go lean until it has gone."""
    budget = RL.Budget(1000)
    relay, owner, client, remote = make(loop, net, early=os.urandom(1 << 20), bufsize=4096, read_remote=False,
                                        budget=budget)
    assert budget.held == len(relay.pend_cr) > 1000
    remote.resume()
    assert run_until(loop, lambda: len(remote.data) == 1 << 20, timeout=5)
    assert budget.held == 0


@pytest.mark.parametrize("direction", ["client to remote", "remote to client"])
def test_over_the_budget_nothing_is_kept_and_the_sender_pauses(loop, net, direction, monkeypatch):
    """With no room in the budget a relay keeps nothing: what its receiver
    cannot take stays in the sender's socket, the sender is not read (its
    EPOLLIN off, the receiver's EPOLLOUT on) and the loop does not spin;
    once the receiver reads, everything arrives, intact and in order, the
    EOF after it."""
    upstream = direction == "client to remote"
    budget = RL.Budget(0)
    relay, owner, client, remote = make(loop, net, bufsize=4096, relay_buf=16384, read_client=upstream,
                                        read_remote=not upstream, budget=budget)
    lean = []
    real = RL.Relay.pump_lean
    monkeypatch.setattr(RL.Relay, "pump_lean", lambda self, *a: lean.append(1) or real(self, *a))
    sender, receiver = (client, remote) if upstream else (remote, client)
    data = os.urandom(4 << 20)
    sender.write(data, shutdown=True)

    def pend():
        return relay.pend_cr if upstream else relay.pend_rc
    assert run_until(loop, lambda: pend() is not None and sender.pending)
    assert pend() == RL.WAITING and budget.held == 0
    sender_mask, receiver_mask = (relay.cmask, relay.rmask) if upstream else (relay.rmask, relay.cmask)
    assert not sender_mask & EPOLLIN and receiver_mask & EPOLLOUT
    assert kernel_agrees(loop, relay)
    moved, calls = (relay.n_cr if upstream else relay.n_rc), len(lean)
    run_for(loop, 0.1)
    assert (relay.n_cr if upstream else relay.n_rc) == moved and len(lean) == calls     # paused, not spinning
    assert not (relay.shut_r if upstream else relay.shut_c)
    receiver.resume()
    assert run_until(loop, lambda: receiver.eof, timeout=5)
    assert hashlib.sha256(receiver.data).digest() == hashlib.sha256(data).digest()
    assert (relay.n_cr if upstream else relay.n_rc) == len(data)
    assert pend() is None and budget.held == 0 and owner.closed == 0 and len(lean) > calls


def test_the_relays_of_a_process_share_one_cap(loop, net):
    """Four relays whose clients do not read, a cap of one buffer: the
    total kept never goes past it, whichever relay runs; once one keeps
    something, the others move what their receivers take and keep
    nothing; when the clients read, everything arrives."""
    budget = RL.Budget(16384)
    shared = bytearray(16384)
    made = [make(loop, net, bufsize=4096, read_client=False, budget=budget, buf=shared) for _ in range(4)]
    relays = [m[0] for m in made]
    data = [os.urandom(1 << 20) for _ in made]
    for (_, _, _, remote), d in zip(made, data):
        remote.write(d)
    most = [0]

    def check():
        assert budget.held == held_by(*relays) <= budget.cap
        most[0] = max(most[0], budget.held)
        return all(r.pend_rc is not None for r in relays)
    assert run_until(loop, check)
    run_for(loop, 0.05)
    check()
    assert 0 < most[0] <= budget.cap
    assert sum(r.pend_rc == RL.WAITING for r in relays) >= 3
    for _, _, client, _ in made:
        client.resume()
    assert run_until(loop, lambda: check() is not None and all(len(m[2].data) == 1 << 20 for m in made),
                     timeout=10)
    assert [bytes(m[2].data) for m in made] == data and budget.held == 0


def test_a_relay_reads_the_usual_way_whenever_a_buffer_fits(loop, net, monkeypatch):
    budget = RL.Budget(16384)
    relay, owner, client, remote = make(loop, net, relay_buf=16384, budget=budget)
    lean = []
    real = RL.Relay.pump_lean
    monkeypatch.setattr(RL.Relay, "pump_lean", lambda self, *a: lean.append(1) or real(self, *a))
    remote.write(b"usual")
    assert run_until(loop, lambda: client.data == b"usual")
    assert not lean
    budget.held = 1                                       # a byte kept elsewhere: a buffer no longer fits
    remote.write(b" lean")
    assert run_until(loop, lambda: client.data == b"usual lean")
    assert lean
    budget.held, n = 0, len(lean)                         # given back: the usual way again
    remote.write(b" usual")
    assert run_until(loop, lambda: client.data == b"usual lean usual")
    assert len(lean) == n


def test_a_relay_reads_no_more_than_the_room_left(loop, net, monkeypatch):
    """Some room, but less than a buffer: reads are cut to it, so whatever
    one leaves behind still fits."""
    monkeypatch.setattr(RL, "LEAN_BELOW", 4096)
    budget = RL.Budget(40000)
    shared = bytearray(1 << 16)
    a, _, a_client, a_remote = make(loop, net, bufsize=4096, read_client=False, budget=budget, buf=shared)
    b, _, b_client, b_remote = make(loop, net, bufsize=4096, read_client=False, budget=budget, buf=shared)
    budget.held = 30000                                   # kept elsewhere: 10000 bytes of room
    a_remote.write(os.urandom(1 << 20))
    assert run_until(loop, lambda: a.pend_rc is not None)
    assert 0 < len(a.pend_rc) <= 10000 and budget.held == 30000 + len(a.pend_rc) <= budget.cap
    b_remote.write(os.urandom(1 << 20))
    assert run_until(loop, lambda: b.pend_rc is not None)
    assert budget.held <= budget.cap
    budget.held -= 30000
    a_client.resume()
    b_client.resume()
    assert run_until(loop, lambda: len(a_client.data) == len(b_client.data) == 1 << 20, timeout=5)
    assert budget.held == 0


def test_a_lean_relay_passes_the_half_close_on_and_keeps_the_idle_clock(loop, net):
    budget = RL.Budget(0)
    relay, owner, client, remote = make(loop, net, budget=budget)
    before = relay.last
    remote.write(b"banner\r\n", shutdown=True)
    assert run_until(loop, lambda: client.eof)
    assert client.data == b"banner\r\n" and relay.last >= before and relay.n_rc == 8
    client.write(b"QUIT\r\n", shutdown=True)
    assert run_until(loop, lambda: remote.eof and owner.closed)
    assert remote.data == b"QUIT\r\n" and budget.held == 0


def test_a_hang_up_of_a_lean_relays_receiver_ends_it(loop, net):
    budget = RL.Budget(0)
    relay, owner, client, remote = make(loop, net, bufsize=4096, relay_buf=16384, read_client=False,
                                        budget=budget)
    remote.write(os.urandom(2 << 20))
    assert run_until(loop, lambda: relay.pend_rc == RL.WAITING)
    client.reset()
    assert run_until(loop, lambda: owner.closed)
    assert budget.held == 0


# --- issue 13: the client side under RFC 1961 protection (GSS-API levels 1 and 2) ------------

def toy(data):
    """A stand-in for GSS_Wrap that changes every byte (pure tests: the
    real mechanism is in tests/integration/test_gssapi.py)."""
    return bytes(b ^ 0xA5 for b in data)


def make_protected(loop, net, chunk=1000, early=b""):
    app, c = net.tcp_pair()
    r, dest = net.tcp_pair()
    c.setblocking(False)
    r.setblocking(False)
    owner = Owner()
    buf = bytearray(1 << 16)
    prot = G.Protection(toy, toy, G.CONFIDENTIALITY, chunk)
    relay = owner.relay = RL.ProtectedRelay(owner, loop, buf, memoryview(buf), c, r, None, prot)
    client = net.peer(app)
    remote = net.peer(dest)
    relay.start(-1, -1, early)
    return relay, owner, client, remote


def test_a_protected_relay_unwraps_the_client_and_wraps_the_remote(loop, net):
    relay, owner, client, remote = make_protected(loop, net)
    sender = G.Protection(toy, toy, G.CONFIDENTIALITY, 1000)
    msg = os.urandom(5000)
    wire = sender.seal(msg)
    for i in range(0, len(wire), 777):            # frames split across reads
        client.write(wire[i:i + 777])
    assert run_until(loop, lambda: remote.data == msg)
    back = os.urandom(70000)
    remote.write(back, shutdown=True)
    receiver = G.Protection(toy, toy, G.CONFIDENTIALITY, 1000)
    assert run_until(loop, lambda: client.eof)
    assert receiver.feed(client.data) == back and receiver.pending == b""
    assert (relay.n_cr, relay.n_rc) == (5000, 70000)
    assert relay.prot.wire_in == len(wire) and relay.prot.wire_out == len(client.data)
    client.shutdown()
    assert run_until(loop, lambda: owner.closed == 1)


def test_a_frame_that_does_not_unwrap_ends_the_relay_with_the_reason(loop, net):
    relay, owner, client, remote = make_protected(loop, net)
    client.write(G.frame(G.MTYP_AUTH, b"not data"))
    assert run_until(loop, lambda: owner.closed == 1)
    assert "type 1" in relay.error and remote.data == b""


def test_a_data_event_that_changes_nothing_skips_update_and_one_that_does_not(loop, net, monkeypatch):
    """The settled relay's data event: a read that is passed on whole and is
    no EOF leaves update()'s inputs as they were, so it is not called; an
    EOF still gets it (the half-close is passed on, the masks follow)."""
    relay, owner, client, remote = make(loop, net)
    calls = []
    real = RL.Relay.update
    monkeypatch.setattr(RL.Relay, "update", lambda self: (calls.append(1), real(self)))
    client.write(b"hello")
    assert run_until(loop, lambda: remote.data == b"hello")
    assert calls == [] and kernel_agrees(loop, relay)
    client.shutdown()
    assert run_until(loop, lambda: relay.shut_r)
    assert calls and relay.cmask == 0 and kernel_agrees(loop, relay)


def test_shaped_relays_are_not_settled():
    """A shaped relay's meter may pause a direction in a read: update()
    after every event there."""
    assert RL.Relay.settled and RL.ProtectedRelay.settled
    assert not RL.ShapedRelay.settled and not RL.ShapedProtectedRelay.settled


def test_a_sole_release_leaves_the_registrations_to_close(loop, net):
    """release(sole=True): the handlers go at once; the kernel's
    registrations end with the sockets' close(2), without an epoll_ctl."""
    relay, owner, client, remote = make(loop, net)
    cfd, rfd = relay.cfd, relay.rfd
    relay.release(sole=True)
    assert cfd not in watched(loop) and rfd not in watched(loop)
    assert cfd in epoll_masks(loop) and rfd in epoll_masks(loop)    # until the close
    relay.c.close()
    relay.r.close()
    masks = epoll_masks(loop)
    assert cfd not in masks and rfd not in masks


# --- splice(2): bulk past the first SPLICE_AFTER bytes of a direction moves kernel to kernel

def count_splices(monkeypatch):
    """The bytes each os.splice call moved (the real call, counted)."""
    moved = []
    real = os.splice

    def counting(*args, **kw):
        n = real(*args, **kw)
        moved.append(n)
        return n
    monkeypatch.setattr(RL.os, "splice", counting)
    return moved


def test_bulk_past_the_first_64k_is_spliced_both_ways_intact_and_counted(loop, net, monkeypatch):
    moved = count_splices(monkeypatch)
    relay, owner, client, remote = make(loop, net, relay_buf=1 << 20)
    up, down = os.urandom(3 << 20), os.urandom(2 << 20)
    client.write(up, shutdown=True)
    remote.write(down, shutdown=True)
    assert run_until(loop, lambda: remote.eof and client.eof, timeout=10)
    assert bytes(remote.data) == up and bytes(client.data) == down
    assert (relay.n_cr, relay.n_rc) == (len(up), len(down))
    # each byte went once into a pipe and once out: at most all but the first 64 KiB of each way
    assert 0 < sum(moved) <= 2 * (len(up) + len(down) - 2 * RL.SPLICE_AFTER)
    assert sum(moved) >= len(up) + len(down)            # most of it spliced, not copied
    assert run_until(loop, lambda: owner.closed == 1)


def test_an_interactive_session_is_never_spliced(loop, net, monkeypatch):
    moved = count_splices(monkeypatch)
    relay, owner, client, remote = make(loop, net)
    for _ in range(20):
        client.write(b"x" * 1000)
        remote.write(b"y" * 1000)
        run_for(loop, 0.005)
    assert run_until(loop, lambda: len(remote.data) == len(client.data) == 20000)
    assert moved == [] and relay.splicing


def test_relay_splice_no_copies_every_byte(loop, net, monkeypatch):
    moved = count_splices(monkeypatch)
    relay, owner, client, remote = make(loop, net, relay_buf=1 << 20, budget=RL.Budget(splice=False))
    data = os.urandom(2 << 20)
    remote.write(data, shutdown=True)
    assert run_until(loop, lambda: client.eof, timeout=10)
    assert bytes(client.data) == data and moved == [] and not relay.splicing


def test_protected_relays_never_splice_and_shaped_ones_ask_their_meter():
    # the bytes of a protected relay change on the way; a shaped one's are only counted
    assert RL.Relay.SPLICE and not RL.ProtectedRelay.SPLICE and not RL.ShapedProtectedRelay.SPLICE
    assert RL.ShapedRelay.SPLICE and RL.ShapedRelay.metered and not RL.Relay.metered


def test_a_slow_receiver_keeps_its_pipe_counted_and_release_closes_it(loop, net):
    budget = RL.Budget(1 << 30)
    relay, owner, client, remote = make(loop, net, bufsize=256 << 10, relay_buf=1 << 20, read_client=False,
                                        budget=budget)
    remote.write(os.urandom(8 << 20))
    assert run_until(loop, lambda: type(relay.pend_rc) is RL.Pipe, timeout=10)
    pipe = relay.pend_rc
    run_for(loop, 0.02)
    assert budget.held == len(pipe) > 0 and not relay.rmask & EPOLLIN and relay.cmask & EPOLLOUT
    assert kernel_agrees(loop, relay)
    fds = (pipe.r, pipe.w)
    relay.release()
    assert budget.held == 0 and (pipe.r, pipe.w) == (-1, -1) and pipe not in budget.pipes
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_pipe_that_drains_goes_back_to_the_pool(loop, net):
    budget = RL.Budget(1 << 30)
    relay, owner, client, remote = make(loop, net, bufsize=256 << 10, relay_buf=1 << 20, read_client=False,
                                        budget=budget)
    data = os.urandom(8 << 20)
    remote.write(data, shutdown=True)
    assert run_until(loop, lambda: type(relay.pend_rc) is RL.Pipe, timeout=10)
    pipe = relay.pend_rc
    client.resume()
    assert run_until(loop, lambda: client.eof, timeout=10)
    assert bytes(client.data) == data and budget.held == 0
    assert pipe in budget.pipes and len(pipe) == 0 and pipe.r >= 0


def test_the_pool_keeps_at_most_its_spare_pipes():
    budget = RL.Budget()
    pipes = [budget.take_pipe() for _ in range(RL.SPARE_PIPES + 2)]
    assert budget.pipes == [] and all(p.size >= 4096 for p in pipes)
    for p in pipes:
        budget.give_pipe(p)
    assert budget.pipes == pipes[:RL.SPARE_PIPES]
    assert all(p.r == -1 for p in pipes[RL.SPARE_PIPES:])
    assert budget.take_pipe() is pipes[RL.SPARE_PIPES - 1]
    for p in pipes:
        p.close()


def test_dropping_the_spare_pipes_closes_them():
    budget = RL.Budget()
    pipes = [budget.take_pipe() for _ in range(3)]
    for p in pipes:
        budget.give_pipe(p)
    fds = [fd for p in pipes for fd in (p.r, p.w)]
    budget.drop_pipes()
    assert budget.pipes == [] and all(p.r == p.w == -1 for p in pipes)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    again = budget.take_pipe()
    assert again.r >= 0                       # a splice may still get one
    budget.give_pipe(again)                   # but while short, none is kept
    assert budget.pipes == [] and again.r == -1
    budget.spare_again()
    p = budget.take_pipe()
    budget.give_pipe(p)
    assert budget.pipes == [p] and p.r >= 0   # and the pool fills again
    p.close()


def test_urgent_data_past_the_splice_point_still_arrives_in_line(loop, net):
    """TCP's urgent mark stops a splice where a read goes on (SO_OOBINLINE):
    the byte and everything after it still arrive, in order."""
    relay, owner, client, remote = make(loop, net, relay_buf=1 << 20)
    for s in (relay.c, relay.r, remote.sock):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    head, tail = os.urandom(256 << 10), os.urandom(256 << 10)
    client.write(head)
    assert run_until(loop, lambda: len(remote.data) == len(head))
    client.sock.send(b"!", socket.MSG_OOB)
    client.write(tail, shutdown=True)
    assert run_until(loop, lambda: remote.eof, timeout=10)
    assert bytes(remote.data) == head + b"!" + tail


def test_a_process_out_of_descriptors_copies_instead(loop, net, monkeypatch):
    import resource
    moved = count_splices(monkeypatch)
    relay, owner, client, remote = make(loop, net, relay_buf=1 << 20)
    data = os.urandom(2 << 20)
    gc.collect()        # earlier tests' pipes, closed now rather than in the middle of this one
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    fill = []           # the free numbers below the limit, taken
    try:
        while True:
            try:
                fill.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(OSError):
            os.pipe()
        remote.write(data, shutdown=True)
        assert run_until(loop, lambda: client.eof, timeout=10)
    finally:
        for fd in fill:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert bytes(client.data) == data and moved == []
