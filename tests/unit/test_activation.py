"""Socket activation: LISTEN_FDS read as sd_listen_fds(3) does (in a child
process, where descriptors 3 and on are the test's to hand over), the
``listen systemd[:NAME]`` form, how inherited sockets join the listen lines,
and that a reload never closes them."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from fakeos import FakeListener, FakeOS, FakeReady
from sockd import activation as A
from sockd import config as C
from sockd import configload as CL
from sockd import master as M
from sockd import listeners as L
from sockd import validators as V
from sockd.errors import Bad, Halt
from test_master import PERMIT, Run, logged  # noqa: F401 (a fixture)


def listener(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen(8)
    return s


def inherit(*named):
    """Inherited objects for real listening sockets: (socket, name)."""
    return [A.Inherited(s, s.fileno(), name) for s, name in named]


def conf(text):
    return C.parse_text(text + PERMIT)


# --- the protocol ---------------------------------------------------------------------------------

def test_listen_fds_only_for_our_pid():
    env = {"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:"}
    assert A.listen_fds(env, 77) == [(3, "public"), (4, "unknown")]
    assert A.listen_fds(env, 78) == []
    assert A.listen_fds({"LISTEN_PID": "77", "LISTEN_FDS": "1"}, 77) == [(3, "unknown")]
    for bad in ({"LISTEN_PID": "77"}, {"LISTEN_FDS": "1"}, {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
                {"LISTEN_PID": "77", "LISTEN_FDS": "0"}, {"LISTEN_PID": "77", "LISTEN_FDS": "-1"}):
        assert A.listen_fds(bad, 77) == []


CHILD = r"""
import json, os, socket, sys
sys.path.insert(0, %r)
from sockd import activation as A
from sockd.errors import Halt
socks = []
for kind in sys.argv[1:]:
    if kind == "tcp":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    else:
        s = socket.socket()
    socks.append(s)
for n, s in enumerate(socks):           # onto 3, 4, ...: what systemd hands over
    os.dup2(s.fileno(), 3 + n)
    os.set_inheritable(3 + n, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(socks)), LISTEN_FDNAMES="one:two")
try:
    got = A.inherited_sockets()
except Halt as exc:
    print(json.dumps({"halt": str(exc)}))
    sys.exit(0)
print(json.dumps({"fds": [i.fd for i in got], "names": [i.name for i in got],
                  "blocking": [i.sock.getblocking() for i in got],
                  "inheritable": [os.get_inheritable(i.fd) for i in got],
                  "ports": [i.address[1] for i in got],
                  "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
"""


def child(*kinds):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", CHILD % root] + list(kinds), capture_output=True, text=True,
                       timeout=30, close_fds=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_inherited_sockets_from_fd_3_named_non_blocking_cloexec_and_the_environment_unset():
    got = child("tcp", "tcp")
    assert got["fds"] == [3, 4] and got["names"] == ["one", "two"]
    assert got["blocking"] == [False, False] and got["inheritable"] == [False, False]
    assert all(p > 0 for p in got["ports"]) and got["env"] == []


@pytest.mark.parametrize("kinds, why", [(("udp",), "not a stream socket"),
                                        (("tcp", "unbound"), "not listening")])
def test_a_descriptor_that_is_no_listening_tcp_socket_stops_the_start(kinds, why):
    got = child(*kinds)
    assert why in got["halt"] and "LISTEN_FDS" in got["halt"]


# --- listen systemd[:NAME] ------------------------------------------------------------------------

def test_listen_systemd_and_systemd_name():
    assert V.to_listen("systemd") == ("systemd", "")
    assert V.to_listen("SystemD:public") == ("systemd", "public")
    assert V.is_inherited(("systemd", "")) and not V.is_inherited(("127.0.0.1", 1080))
    assert V.listen_text(("systemd", "lb")) == "systemd:lb" and V.listen_text(("::1", 80)) == "[::1]:80"
    for bad in ("systemd:", "systemd:a b", "systemd:" + "x" * 256):
        with pytest.raises(Bad):
            V.to_listen(bad)


def test_listen_systemd_takes_proxy_protocol_and_is_no_open_proxy_at_parse_time():
    cfg = C.parse_text("listen systemd:lb proxy-protocol 10.0.0.2\nlisten systemd\npermit 0/0\n")
    assert cfg.listen == [("systemd", "lb"), ("systemd", "")]
    assert list(cfg.listen_proxy) == [("systemd", "lb", 0)]
    assert not any("open proxy" in w[2] for w in cfg.warnings)


# --- joining the listen lines ---------------------------------------------------------------------

def test_no_listen_line_serves_the_inherited_only():
    a, b = listener(), listener()
    inh = inherit((a, "x"), (b, "y"))
    out, added, dropped = L.open_listeners(conf(""), inherited=inh)
    assert sorted(map(id, out.values())) == sorted([id(a), id(b)]) and added == [] and dropped == []
    assert ("systemd", "x", None, a.fileno()) in out
    a.close()
    b.close()


def test_an_address_line_takes_the_inherited_socket_bound_there_and_others_are_added():
    a, b = listener(), listener()
    port = a.getsockname()[1]
    inh = inherit((a, "x"), (b, "y"))
    out, added, _ = L.open_listeners(conf("listen 127.0.0.1:%d\nlisten 127.0.0.1:0\n" % port), inherited=inh)
    try:
        assert out[("127.0.0.1", port, 0)] is a                  # no second bind (it would fail)
        assert added == [("127.0.0.1", 0, 0)]                    # only what it opened
        assert out[("systemd", "y", None, b.fileno())] is b      # not named: served all the same
    finally:
        out[("127.0.0.1", 0, 0)].close()
        a.close()
        b.close()


def test_listen_systemd_name_takes_those_of_that_name_with_the_lines_proxy_protocol():
    a, b, c = listener(), listener(), listener()
    inh = inherit((a, "lb"), (b, "lb"), (c, "plain"))
    cfg = conf("listen systemd:lb proxy-protocol 10.0.0.2\nlisten systemd\n")
    out, _, _ = L.open_listeners(cfg, inherited=inh)
    assert out[("systemd", "lb", 0, a.fileno())] is a and out[("systemd", "lb", 0, b.fileno())] is b
    assert out[("systemd", "", 0, c.fileno())] is c
    trusted = {k for k in out if k[:3] in cfg.listen_proxy}
    assert trusted == {("systemd", "lb", 0, a.fileno()), ("systemd", "lb", 0, b.fileno())}
    for s in (a, b, c):
        s.close()


def test_listen_systemd_without_such_a_socket_stops_the_start():
    a = listener()
    with pytest.raises(Halt, match="listen systemd:nope: no such socket was inherited"):
        L.open_listeners(conf("listen 127.0.0.1:0\nlisten systemd:nope\n"), inherited=inherit((a, "x")))
    with pytest.raises(Halt, match="not started by socket activation"):
        L.open_listeners(conf("listen systemd\n"))
    a.close()


def test_a_reload_never_drops_an_inherited_socket_even_when_no_line_names_it_any_more():
    a = listener()
    port = a.getsockname()[1]
    inh = inherit((a, "x"))
    first, _, _ = L.open_listeners(conf("listen 127.0.0.1:%d\n" % port), inherited=inh)
    second, added, dropped = L.open_listeners(conf("listen 127.0.0.1:0\n"), keep=first, inherited=inh)
    try:
        assert dropped == [] and list(second.values()).count(a) == 1
        third, _, dropped = L.open_listeners(conf("listen systemd\n"), keep=second, inherited=inh)
        assert dropped == [second[added[0]]]                     # the one it had opened itself
    finally:
        second[added[0]].close()
        a.close()


def test_an_inherited_public_socket_warns_of_an_open_proxy():
    a = listener("0.0.0.0")
    inh = inherit((a, "x"))
    cfg = C.parse_text("permit 0/0\n")
    out, _, _ = L.open_listeners(cfg, inherited=inh)
    (w,) = L.inherited_warnings(cfg, out, inh)
    assert "open proxy" in w[2] and "0.0.0.0:%d" % a.getsockname()[1] in w[2]
    lo = listener()
    inh2 = inherit((lo, "y"))
    out, _, _ = L.open_listeners(cfg, inherited=inh2)
    assert L.inherited_warnings(cfg, out, inh2) == []
    a.close()
    lo.close()


# --- the master: inherited sockets for the whole of its life ----------------------------------------

class ActivatedRun(Run):
    """test_master's Run, with the sockets systemd would pass."""

    def __init__(self, tmp_path, conf, inherited):
        self.path = tmp_path / "sockd.conf"
        self.path.write_text(conf)
        self.os = FakeOS()
        self.os.inherited = inherited
        self.ready = FakeReady()
        self.m = M.Master(CL.load(str(self.path)), None, str(self.path), {}, osys=self.os)
        self.m.open(self.ready)
        self.m.start()


def test_the_master_serves_inherited_sockets_and_no_reload_closes_them(tmp_path, logged):
    lsock = FakeListener(7, "127.0.0.1", 5555)
    r = ActivatedRun(tmp_path, "workers 1\n" + PERMIT, [A.Inherited(lsock, 3, "sockd.socket")])
    assert list(r.m.listeners.values()) == [lsock] and r.os.listeners == []      # the default not opened
    assert "listening on 127.0.0.1:5555 (threads model, from systemd: fd 3, sockd.socket)" in logged
    r.boot(1)
    assert r.m.phase is M.SERVING
    # a reload whose new worker cannot start is given up: it closes what it opened only
    r.rewrite("workers 1\nlisten 127.0.0.2:0\n" + PERMIT)
    r.signal(signal.SIGHUP)
    (new,) = r.workers(2)
    r.os.exit(new, 3)
    r.step()
    assert any(line.startswith("reload failed") for line in logged)
    assert r.os.listeners[-1].fd == -1 and lsock.fd == 7
    # a reload that no longer names it keeps it all the same
    r.rewrite("workers 1\nlisten 127.0.0.3:0\n" + PERMIT)
    r.signal(signal.SIGHUP)
    r.boot(3)
    assert r.m.generation == 3 and lsock in r.m.listeners.values() and lsock.fd == 7
