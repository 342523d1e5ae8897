"""sockd behind a real HAProxy (TCP mode, ``send-proxy-v2``, health checks
with ``check-send-proxy``), on loopback: the rules, the limits and the log
see the real client; stopping one of two sockd loses no client; what reaches
a PROXY protocol listener directly is refused unless it comes from the
balancer with a header.  The configurations here are the ones docs/deploy.md
shows.

Clients bind their source to 127.0.0.5, .6 and .7 so that each has an
address of its own; HAProxy reaches sockd from 127.0.0.1.  HAProxy listens on
a socket this test opens on port 0 and hands over (``bind fd@N``): its own
``bind`` refuses port 0."""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading

import pytest

import helpers
from helpers import need, recv_exact, wait_for

ALLOWED, DENIED, OTHER = "127.0.0.5", "127.0.0.6", "127.0.0.7"
UNTRUSTED = "127.0.0.9"

# sockd on each node: PROXY protocol only from the balancer (here 127.0.0.1).
# Nothing permits 127.0.0.1 itself: were sockd to judge HAProxy's address
# instead of the real client's, every request would be refused.
SOCKD_CONF = """\
listen 127.0.0.1:0 proxy-protocol 127.0.0.1/32
timeout shutdown 20
permit %(allowed)s 255.255.255.255 127.0.0.1 255.255.255.255
permit %(other)s 255.255.255.255 127.0.0.1 255.255.255.255
deny %(denied)s 255.255.255.255
""" % {"allowed": ALLOWED, "denied": DENIED, "other": OTHER}

HAPROXY_CONF = """\
global
    log stderr format raw local0 info
    maxconn 200
    stats socket %(stats)s mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    option redispatch 1
    retries 3
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
frontend socks
    bind fd@%(fd)d
    default_backend sockd
backend sockd
    balance roundrobin
    # the check speaks SOCKS 5 after its PROXY header (v2 LOCAL): a node
    # whose kernel still accepts but whose workers do not answer is down
    option tcp-check
    tcp-check send-binary 050100
    tcp-check expect binary 0500
    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
%(servers)s
"""


class HAProxy:
    """haproxy -db (foreground) on a private configuration; its frontend is
    a listening socket opened here on a free port.  ``-p`` does nothing in
    -db mode: the Popen is the PID."""

    def __init__(self, exe, tmp_path, ports, name="haproxy"):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.addr = self.ls.getsockname()
        self.stats = str(tmp_path / (name + ".stats"))
        self.names = ["s%d" % (i + 1) for i in range(len(ports))]
        servers = "\n".join("    server %s 127.0.0.1:%d" % (n, p) for n, p in zip(self.names, ports))
        self.conf = tmp_path / (name + ".cfg")
        self.conf.write_text(HAPROXY_CONF % {"stats": self.stats, "fd": self.ls.fileno(), "servers": servers})
        check = subprocess.run([exe, "-c", "-q", "-f", str(self.conf)], pass_fds=(self.ls.fileno(),),
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = tmp_path / (name + ".log")
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-db", "-f", str(self.conf)], pass_fds=(self.ls.fileno(),),
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.ls.close()     # HAProxy has its own copy

    def log(self):
        return self.log_path.read_text(errors="replace")

    def command(self, line):
        """One command on the stats socket; None while HAProxy is not up."""
        if self.proc.poll() is not None:
            raise AssertionError("haproxy exited with %s:\n%s" % (self.proc.returncode, self.log()))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.stats)
            s.sendall(line.encode() + b"\n")
            return helpers.recv_all(s).decode()
        except OSError:
            return None
        finally:
            s.close()

    def servers(self):
        """{server: (status, last check)} of the backend, from ``show stat``."""
        out = self.command("show stat")
        if not out:
            return {}
        rows = [r.split(",") for r in out.splitlines() if r]
        head = rows[0]
        head[0] = head[0].lstrip("# ")
        col = {name: i for i, name in enumerate(head)}
        return {r[col["svname"]]: (r[col["status"]], r[col["check_status"]])
                for r in rows[1:] if r[0] == "sockd" and r[col["svname"]] in self.names}

    def wait_servers(self, want, timeout=20):
        """Wait until the servers' states are ``want`` ({name: "UP"|"DOWN"|
        "DRAIN"}) as the health checks found them (L7OK: the check sent its
        PROXY header and its SOCKS 5 greeting, and sockd answered)."""
        def ok():
            st = self.servers()
            return all(n in st and st[n][0] == w and (w == "DOWN" or st[n][1] == "L7OK")
                       for n, w in want.items()) and st
        return wait_for(ok, timeout, 0.05, what="haproxy servers %s (now %s)" % (want, self.servers()))

    def stop(self):
        helpers.kill_pid(self.proc)
        self.logf.close()


@pytest.fixture
def haproxy(tmp_path):
    """haproxy(ports) -> HAProxy in front of those sockd ports, stopped by its PID."""
    exe = need("haproxy")
    started = []

    def start(ports):
        h = HAProxy(exe, tmp_path, ports, name="haproxy%d" % len(started))
        started.append(h)
        h.wait_servers({n: "UP" for n in h.names})
        return h
    yield start
    for h in started:
        h.stop()


def via(front, src, dst, timeout=10):
    """A SOCKS 5 CONNECT to ``dst`` through ``front`` from source address
    ``src``.  Returns (socket, REP)."""
    s = socket.create_connection(front, timeout, source_address=(src, 0))
    try:
        s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(dst[0]) + struct.pack("!H", dst[1]))
        assert recv_exact(s, 2) == b"\x05\x00"
        rep = recv_exact(s, 10)
    except BaseException:
        s.close()
        raise
    return s, rep[1]


def echo_once(s, data):
    s.sendall(data)
    assert recv_exact(s, len(data)) == data


def connects(log):
    return re.findall(r"connected -- Connect from \S+@(\S+) to", log)


def two_nodes(start_sockd, haproxy, conf=SOCKD_CONF, model=None):
    s1 = start_sockd(conf, workers=1, model=model, name="node1")
    s2 = start_sockd(conf, workers=1, model=model, name="node2")
    return s1, s2, haproxy([s1.port, s2.port])


class Clients:
    """New clients through the balancer, ``n`` at a time, one after another
    until stopped: each is granted and gets its bytes echoed, or counts as
    a failure (with what went wrong)."""

    def __init__(self, front, src, dst, n=1, most=3000):
        self.front, self.src, self.dst, self.most = front, src, dst, most
        self.outcomes = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for th in self.threads:
            th.start()

    def run(self):
        while not self.done.is_set() and len(self.outcomes) < self.most:
            try:
                s, rep = via(self.front, self.src, self.dst)
                with s:
                    if rep == 0:
                        echo_once(s, b"new client")
                self.outcomes.append(rep)
            except (OSError, EOFError, AssertionError) as exc:
                self.outcomes.append(repr(exc))

    def wait(self, more, timeout=30):
        want = len(self.outcomes) + more
        wait_for(lambda: len(self.outcomes) >= want, timeout, what="%d more clients" % more)

    def stop(self):
        self.done.set()
        for th in self.threads:
            th.join(15)
        failures = [o for o in self.outcomes if o != 0]
        assert not failures, "%d of %d clients failed: %s" % (len(failures), len(self.outcomes), failures[:5])
        return len(self.outcomes)


def accept_queue(port):
    """Connections waiting in the accept queue of the listener on
    127.0.0.1:``port`` (rx_queue of a LISTEN socket in /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == "0100007F:%04X" % port and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return 0


# --- (a) the rules see the real client -----------------------------------------------------------

def test_rules_see_the_real_client_through_haproxy(start_sockd, haproxy, echo_server, model):
    s1, s2, lb = two_nodes(start_sockd, haproxy, model=model)
    results = []
    for src in (ALLOWED, ALLOWED, DENIED, DENIED) * 2:      # round robin: each address meets both nodes
        s, rep = via(lb.addr, src, echo_server.addr)
        with s:
            if rep == 0:
                echo_once(s, b"hello from %s\n" % src.encode())
            else:
                assert helpers.recv_all(s) == b""       # refused, then closed
        results.append((src, rep))
    assert all(rep == 0 for src, rep in results if src == ALLOWED), results
    assert all(rep == 2 for src, rep in results if src == DENIED), results    # 2: not allowed by ruleset
    for node in (s1, s2):
        node.wait_log(r"terminated -- Connect from \S+@%s to 127\.0\.0\.1" % re.escape(ALLOWED))
        node.wait_log(r"refused -- Connect from \S+@%s to 127\.0\.0\.1 .*node\d\.conf:5" % re.escape(DENIED))
        log = node.log()
        # the balancer is never taken for the client, and its health checks
        # (PROXY v2 LOCAL, then a SOCKS 5 greeting) are served quietly
        assert not re.search(r"(from|@)127\.0\.0\.1\b", log), log
        assert not re.search(r"error -- |Traceback", log), log
    # HAProxy's log names the same clients
    assert re.search(r"%s:\d+ .* socks sockd/s[12] " % re.escape(ALLOWED), lb.log()), lb.log()


@pytest.mark.parametrize("model", [
    "threads",
    "fork"])
def test_per_address_limit_counts_the_real_client(start_sockd, haproxy, echo_server, model):
    node = start_sockd(SOCKD_CONF + "limit per-address 1\n", workers=1, model=model, name="node1")
    lb = haproxy([node.port])
    first, rep = via(lb.addr, ALLOWED, echo_server.addr)
    with first:
        assert rep == 0
        echo_once(first, b"one")
        second, rep = via(lb.addr, ALLOWED, echo_server.addr)
        second.close()
        assert rep == 1, rep                            # general failure: over the limit
        other, rep = via(lb.addr, OTHER, echo_server.addr)
        with other:
            assert rep == 0                             # another client, same balancer address
            echo_once(other, b"two")
    node.wait_log(r"refused -- .*too many clients from %s \(limit per-address" % re.escape(ALLOWED))


# --- (b) stopping one node loses no client -----------------------------------------------------------

def test_stopping_one_node_loses_no_client(start_sockd, haproxy, echo_server):
    """SIGTERM alone: node1 closes its listener at once, HAProxy's retries
    (option redispatch 1) and health checks send everyone to node2, and the
    sessions node1 holds go on until their clients close them."""
    s1, s2, lb = two_nodes(start_sockd, haproxy)
    held = []
    try:
        for _ in range(6):
            s, rep = via(lb.addr, ALLOWED, echo_server.addr)
            held.append(s)
            assert rep == 0
            echo_once(s, b"before")
        n1 = wait_for(lambda: len(connects(s1.log())) >= 3 and len(connects(s1.log())), 10,
                      what="node1 to hold its share of the sessions")
        clients = Clients(lb.addr, OTHER, echo_server.addr)
        clients.wait(5)

        s1.proc.send_signal(signal.SIGTERM)
        s1.wait_log(r"stopping \(SIGTERM\)")

        def refused():
            try:
                socket.create_connection(("127.0.0.1", s1.port), 2).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_for(refused, 10, what="node1 to close its listener")
        lb.wait_servers({"s1": "DOWN", "s2": "UP"})
        # node1 drains: its sessions still relay, so it has not exited
        for s in held:
            echo_once(s, b"after")
        assert s1.proc.poll() is None
        for s in held:
            s.close()
        held = []
        # ... and exits as soon as they have finished, well before timeout shutdown
        assert s1.proc.wait(15) == 0
        clients.wait(20)
        clients.stop()
    finally:
        for s in held:
            s.close()
    log1 = s1.log()
    assert "still open after" not in log1                   # nobody was cut off at the deadline
    assert len(re.findall(r"terminated -- Connect from \S+@%s " % re.escape(ALLOWED), log1)) == n1
    assert len(connects(s2.log())) >= 3 + 20
    assert "Traceback" not in log1 + s2.log()


def test_drain_on_the_balancer_then_stop_fork_model(start_sockd, haproxy, echo_server):
    """The procedure of docs/deploy.md for a node that must lose nobody even
    under load: take it out on the balancer (state drain), wait for its
    accept queue to empty, then SIGTERM.  In the fork model, where the
    master accepts and forks, a SIGTERM alone can reset the few connections
    still queued in the kernel when the master closes its listener."""
    s1, s2, lb = two_nodes(start_sockd, haproxy, model="fork")
    held = []
    for _ in range(2):                      # round robin: one on each node
        s, rep = via(lb.addr, ALLOWED, echo_server.addr)
        held.append(s)
        assert rep == 0
        echo_once(s, b"before")
    s1.wait_log(r"connected -- Connect from \S+@%s " % re.escape(ALLOWED))
    try:
        clients = Clients(lb.addr, OTHER, echo_server.addr, n=2)
        clients.wait(10)
        assert lb.command("set server sockd/s1 state drain").strip() == ""
        lb.wait_servers({"s1": "DRAIN", "s2": "UP"})
        wait_for(lambda: accept_queue(s1.port) == 0, 10, what="node1's accept queue to empty")
        s1.proc.send_signal(signal.SIGTERM)
        s1.wait_log(r"stopping \(SIGTERM\)")
        for s in held:
            echo_once(s, b"after")
        assert s1.proc.poll() is None
    finally:
        for s in held:
            s.close()
    assert s1.proc.wait(15) == 0
    clients.wait(10)
    clients.stop()
    assert "still open after" not in s1.log()


def test_a_node_whose_worker_stops_answering_is_taken_out(start_sockd, haproxy, echo_server):
    """What the SOCKS-level check is for: node1's kernel still completes
    connections to its listener, but its worker is stopped (SIGSTOP), so
    the check gets no SOCKS answer: HAProxy takes node1 out and every client
    is served by node2; node1 comes back once it answers again."""
    s1, s2, lb = two_nodes(start_sockd, haproxy)
    stopped = s1.wait_workers(1)
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        lb.wait_servers({"s1": "DOWN", "s2": "UP"})
        for _ in range(6):
            s, rep = via(lb.addr, ALLOWED, echo_server.addr)
            with s:
                assert rep == 0
                echo_once(s, b"served by node2")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    lb.wait_servers({"s1": "UP", "s2": "UP"})
    assert connects(s1.log()) == [] and len(connects(s2.log())) == 6
    assert not re.search(r"error -- |Traceback", s1.log() + s2.log())


@pytest.fixture
def socks_conf(tmp_path, monkeypatch):
    """socks_conf(text): the client library of this process reads it."""
    from sockd.client import core
    path = tmp_path / "socks.conf"
    for var in ("SOCKS_SERVER", "SOCKS_USERNAME", "SOCKS_PASSWORD", "SOCKS_BANNER", "SOCKS_DNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SOCKS_CONF", str(path))

    def write(text):
        path.write_text(text)
        core.reset()
    yield write
    core.reset()


def test_clients_fail_over_between_two_balancers(start_sockd, haproxy, socks_conf, caplog):
    """Client-side failover for the balancers themselves: a socks.conf
    server list naming two HAProxy instances in front of the same nodes.
    With the first one gone, the client library goes on to the second."""
    from sockd.client import socksocket
    target = helpers.TCPServer(helpers.echo_handler, host="127.0.0.2")    # 127.0.0.1 is always direct
    try:
        conf = SOCKD_CONF + "permit %s 255.255.255.255 127.0.0.2 255.255.255.255\n" % ALLOWED
        s1, s2, lb1 = two_nodes(start_sockd, haproxy, conf=conf)
        lb2 = haproxy([s1.port, s2.port])
        socks_conf("sockd @=127.0.0.1:%d,127.0.0.1:%d ALL\n" % (lb1.addr[1], lb2.addr[1]))

        def client(text):
            c = socksocket()
            c.settimeout(10)
            c.bind((ALLOWED, 0))          # the connection to the server is made from there
            try:
                c.connect(target.addr)
                echo_once(c, text)
            finally:
                c.close()
        client(b"through the first balancer")
        wait_for(lambda: re.search(r"%s:\d+ .* socks sockd/s1 " % re.escape(ALLOWED), lb1.log()), 10,
                 what="lb1's log line")
        lb1.stop()
        for _ in range(4):
            client(b"through the second balancer")
        assert "Failed to connect to sockd at 127.0.0.1:%d" % lb1.addr[1] in caplog.text
        wait_for(lambda: len(re.findall(r"%s:\d+ .* socks sockd/s[12] " % re.escape(ALLOWED), lb2.log())) == 4,
                 10, what="lb2's log lines")
        both = connects(s1.log()) + connects(s2.log())
        assert both == [ALLOWED] * 5, both
    finally:
        target.close()


# --- reload and identd through the balancer -------------------------------------------------------

def test_reload_applies_new_rules_to_the_real_client(start_sockd, haproxy, echo_server):
    node = start_sockd(SOCKD_CONF, workers=1, name="node1")
    lb = haproxy([node.port])
    s, rep = via(lb.addr, DENIED, echo_server.addr)
    s.close()
    assert rep == 2
    with open(node.conf_path, "w") as f:
        f.write(SOCKD_CONF.replace("deny %s 255.255.255.255" % DENIED,
                                   "permit %s 255.255.255.255 127.0.0.1 255.255.255.255" % DENIED))
    node.proc.send_signal(signal.SIGHUP)
    node.wait_log(r"reloaded ")
    s, rep = via(lb.addr, DENIED, echo_server.addr)
    with s:
        assert rep == 0
        echo_once(s, b"permitted now")
    node.wait_log(r"connected -- Connect from \S+@%s " % re.escape(DENIED))


# the identd client's address: one per test process, so that two runs at
# once do not compete for its port 113
IDENT_CLIENT = "127.113.%d.%d" % ((os.getpid() >> 8) & 255, os.getpid() & 255)


@pytest.fixture
def oidentd():
    """oidentd on IDENT_CLIENT:113, the identd of that client's host,
    stopped by its PID."""
    exe = need("oidentd")
    d = tempfile.mkdtemp(prefix="sockd-lb-oidentd-")
    os.chmod(d, 0o755)
    conf = os.path.join(d, "oidentd.conf")
    with open(conf, "w") as f:
        f.write("default {\n    default {\n        deny spoof\n        deny spoof_all\n        deny hide\n"
                "        deny random\n        deny numeric\n    }\n}\n")
    os.chmod(conf, 0o644)
    logf = open(os.path.join(d, "oidentd.log"), "wb")
    proc = subprocess.Popen([exe, "-i", "-S", "-a", IDENT_CLIENT, "-p", "113", "-C", conf],
                            stdout=logf, stderr=subprocess.STDOUT)

    def up():
        if proc.poll() is not None:
            raise AssertionError("oidentd exited: " + open(logf.name).read())
        try:
            socket.create_connection((IDENT_CLIENT, 113), 0.5).close()
            return True
        except OSError:
            return False
    try:
        wait_for(up, 10, what="oidentd on %s:113" % IDENT_CLIENT)
        yield logf.name
    finally:
        helpers.kill_pid(proc)
        logf.close()
        shutil.rmtree(d)


def test_identd_is_asked_at_the_real_client(start_sockd, haproxy, echo_server, oidentd):
    """Strict identd through HAProxy: sockd asks the identd of the real
    client about the client's port and the port the client
    reached on HAProxy, from the address the client reached (HAProxy runs on
    this host), so oidentd finds the connection: this test's, as root."""
    node = start_sockd("listen 127.0.0.1:0 proxy-protocol 127.0.0.1/32\ntimeout ident 5\n"
                       "permit ?=I %s 255.255.255.255 127.0.0.1 255.255.255.255\n" % IDENT_CLIENT,
                       workers=1, name="node1")
    lb = haproxy([node.port])
    s, rep = via(lb.addr, IDENT_CLIENT, echo_server.addr)
    with s:
        assert rep == 0, open(oidentd).read() + node.log()
        echo_once(s, b"who am I")
    node.wait_log(r"connected -- Connect from root\(root\)@%s " % re.escape(IDENT_CLIENT))
    assert re.search(r"Successful lookup: \d+ , %d : root" % lb.addr[1], open(oidentd).read())


# --- (c) what reaches a PROXY protocol listener directly --------------------------------------------

def v2_header(src, sport, dst, dport):
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4), written
    out from the specification rather than with sockd's own encoder."""
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + b"\x21\x11" + struct.pack("!H", len(body)) + body


def closed_without_answer(s):
    try:
        return helpers.recv_all(s) == b""
    except ConnectionResetError:
        return True


def test_direct_connections_without_the_balancer_are_refused(start_sockd, haproxy, echo_server):
    node = start_sockd(SOCKD_CONF, workers=1, name="node1")
    lb = haproxy([node.port])
    workers = node.wait_workers(1)
    greeting = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_server.port)

    # from an address that is not a balancer, even with a header
    with socket.create_connection(node.addr, 5, source_address=(UNTRUSTED, 0)) as s:
        try:
            s.sendall(v2_header(ALLOWED, 40000, "127.0.0.1", node.port) + greeting)
        except OSError:
            pass
        assert closed_without_answer(s)
    node.wait_log(r"refused -- connection from %s: not a trusted PROXY protocol source" % re.escape(UNTRUSTED))

    # from the balancer's address, but without a header, or a broken one
    for data, why in ((greeting, "no PROXY protocol header"),
                      (b"PROXY TCP4 127.0.0.5 nowhere 1 2\r\n" + greeting, "malformed PROXY v1 header"),
                      (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12) + greeting, "PROXY v2: unknown version")):
        with socket.create_connection(node.addr, 5) as s:
            s.sendall(data)
            assert closed_without_answer(s)
        node.wait_log(r"error -- %s.* from host 127\.0\.0\.1\." % re.escape(why))

    # sockd goes on serving: through HAProxy, and directly with a good header
    s, rep = via(lb.addr, ALLOWED, echo_server.addr)
    with s:
        assert rep == 0
        echo_once(s, b"still serving")
    with socket.create_connection(node.addr, 5) as s:
        s.sendall(v2_header(ALLOWED, 40001, "198.51.100.1", 1080) + greeting)
        assert recv_exact(s, 12)[:4] == b"\x05\x00\x05\x00"
        echo_once(s, b"a header by hand")
    log = node.log()
    assert node.worker_pids() == workers and "Traceback" not in log
    assert not re.search(r"connected -- .*@(%s|127\.0\.0\.1) " % re.escape(UNTRUSTED), log), log


def test_silent_connection_to_proxy_listener_times_out(start_sockd):
    node = start_sockd(SOCKD_CONF + "timeout negotiate 1\n", workers=1, name="node1")
    with socket.create_connection(node.addr, 5) as s:
        s.settimeout(4)
        try:
            assert closed_without_answer(s)
        except socket.timeout:
            pytest.fail("still open after 4 s with timeout negotiate 1")


def test_private_destinations_are_judged_by_the_real_client(start_sockd, echo_server):
    """deny-private-destinations auto: a real client that is not on loopback
    (here named by a header written by hand, as a balancer would) reaches
    this host's loopback only through a rule that names it."""
    node = start_sockd("listen 127.0.0.1:0 proxy-protocol 127.0.0.1/32\n"
                       "permit 192.0.2.7 255.255.255.255 127.0.0.1 255.255.255.255\n"
                       "permit 192.0.2.0/24 0/0\n", workers=1, name="node1")
    request = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_server.port)
    replies = {}
    for src in ("192.0.2.7", "192.0.2.8"):
        with socket.create_connection(node.addr, 5) as s:
            s.sendall(v2_header(src, 40000, "198.51.100.1", 1080) + request)
            replies[src] = recv_exact(s, 12)[3]
    assert replies == {"192.0.2.7": 0, "192.0.2.8": 2}, replies
    node.wait_log(r"refused -- Connect from \S+@192\.0\.2\.8 to 127\.0\.0\.1 .*deny-private-destinations")
