"""The metrics endpoint (``metrics ADDRESS:PORT [CIDR...]``) against real
components: a real Prometheus server (Debian's ``prometheus``) scrapes
sockd every second while curl makes known requests through it, and its
HTTP API (/api/v1/query) must return the counts; they survive a SIGHUP
and a SIGKILLed worker without going backwards (PromQL ``resets()``).
The endpoint refuses clients outside its access list, answers only GET
/metrics, and a client that never finishes its request stalls nothing.
Every process is started here and stopped by its PID."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import helpers
from helpers import wait_for

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"


def metrics_url(s):
    """The endpoint's URL, from its log line (written after 'listening')."""
    return s.wait_log(r"metrics: serving (http://[0-9.:\[\]]+/metrics)").group(1)


def scrape(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def sample(text, name):
    """The value of the sample line ``name`` (with its labels) in ``text``."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def curl_socks(proxy_port, url, *extra):
    return subprocess.run([helpers.need("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                           "--socks5", "127.0.0.1:%d" % proxy_port, url] + list(extra),
                          capture_output=True, text=True, timeout=15)


class Prometheus:
    """/usr/bin/prometheus on a free loopback port, scraping ``target``
    every second; its data in ``tmp``.  Stopped by its PID."""

    def __init__(self, tmp, target):
        exe = helpers.need("prometheus")
        self.port = helpers.free_port()
        conf = os.path.join(str(tmp), "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n"
                    "scrape_configs:\n  - job_name: sockd\n    static_configs:\n"
                    "      - targets: ['%s']\n" % target)
        self.log_path = os.path.join(str(tmp), "prometheus.log")
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [exe, "--config.file=" + conf, "--storage.tsdb.path=" + os.path.join(str(tmp), "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
            stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(self.ready, 20, 0.1, "prometheus to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError("prometheus did not start:\n" + self.log())

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited:\n" + self.log())
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, promql):
        """The instant query's result: [(labels, value)]."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as r:
            got = json.load(r)
        assert got["status"] == "success", got
        return [(x["metric"], float(x["value"][1])) for x in got["data"]["result"]]

    def value(self, promql):
        """The single value of ``promql``, or None when it has none."""
        got = self.query(promql)
        return got[0][1] if len(got) == 1 else None

    def wait_value(self, promql, want, timeout=15):
        seen = []

        def check():
            v = self.value(promql)
            seen.append(v)
            return v == want
        try:
            wait_for(check, timeout, 0.2, "%s == %s" % (promql, want))
        except AssertionError:
            raise AssertionError("%s: wanted %s, saw %s" % (promql, want, seen[-5:])) from None
        return want

    def stop(self):
        helpers.kill_pid(self.proc)
        self.logf.close()


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(target):
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


CONNECTED = 'sockd_sessions_total{command="connect",outcome="connected"}'
REFUSED = 'sockd_sessions_total{command="connect",outcome="refused"}'


def test_prometheus_scrapes_the_counts_and_they_survive_a_reload_and_a_killed_worker(
        start_sockd, www, prometheus):
    closed = helpers.closed_port()
    conf = ("listen 127.0.0.1:0\nmetrics 127.0.0.1:0\n"
            "deny 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq %d\n" % closed + PERMIT_LOCAL)
    s = start_sockd(conf, workers=2)
    deny_line, permit_line = "%s:3" % s.conf_path, "%s:4" % s.conf_path
    url = metrics_url(s)
    prom = prometheus(urllib.parse.urlsplit(url).netloc)
    for _ in range(5):
        assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"
    for _ in range(2):
        assert curl_socks(s.port, "http://127.0.0.1:%d/" % closed).stdout == "000"
    # what Prometheus scraped, through its own query API
    assert prom.wait_value(CONNECTED, 5) == 5
    assert prom.wait_value(REFUSED, 2) == 2
    assert prom.value('sockd_rule_hits_total{rule="%s"}' % deny_line) == 2
    assert prom.value('sockd_rule_hits_total{rule="%s"}' % permit_line) == 5
    assert prom.value("sockd_connections_accepted_total") == 7
    assert prom.value('sockd_bytes_total{direction="out"}') > 5 * len("hello through sockd\n")
    assert prom.value("sockd_reply_seconds_count") == 7
    assert prom.value('sockd_auth_total{method="none",outcome="ok"}') == 7
    assert prom.value("sum(sockd_sessions_active)") == 0
    assert prom.value("sockd_workers") == 2

    # a reload: new workers, the old ones' counts kept
    os.kill(s.proc.pid, signal.SIGHUP)
    s.wait_log(r"reloaded ")
    assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"
    prom.wait_value(CONNECTED, 6)
    prom.wait_value("sockd_reloads_total", 1)

    # a worker killed outright: what it reported stays
    before = helpers.children_of(s.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    s.wait_log(r"exited with signal 9; starting another")
    wait_for(lambda: len(helpers.children_of(s.proc.pid)) == 2, 10, what="the worker replaced")
    prom.wait_value("sockd_workers_died_total", 1)
    assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"
    prom.wait_value(CONNECTED, 7)
    assert prom.value(REFUSED) == 2
    assert prom.value("sockd_connections_accepted_total") == 9, scrape(url)
    # never backwards, at any scrape since the start
    for series in (CONNECTED, REFUSED, "sockd_connections_accepted_total", 'sockd_bytes_total{direction="out"}',
                   "sockd_reply_seconds_count"):
        assert prom.value("resets(%s[5m])" % series) == 0, series


def test_fork_children_report_when_they_end(start_sockd, www):
    closed = helpers.closed_port()
    s = start_sockd("listen 127.0.0.1:0\nmetrics 127.0.0.1:0\n"
                    "deny 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq %d\n" % closed + PERMIT_LOCAL, model="fork")
    url = metrics_url(s)
    for _ in range(3):
        assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"
    assert curl_socks(s.port, "http://127.0.0.1:%d/" % closed).stdout == "000"
    # each child reports as it ends, which may be after its client has its answer
    def ended(text):
        return (sample(text, CONNECTED), sample(text, REFUSED)) == (3, 1)
    wait_for(lambda: ended(scrape(url)), 10, what="3 connected and 1 refused")
    text = scrape(url)
    assert sample(text, 'sockd_rule_hits_total{rule="%s:3"}' % s.conf_path) == 1
    assert sample(text, "sockd_children_started_total") == 4
    assert sample(text, 'sockd_bytes_total{direction="out"}') > 3 * len("hello through sockd\n")


def curl_status(url, *extra):
    r = subprocess.run([helpers.need("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
                       + list(extra) + [url], capture_output=True, text=True, timeout=15)
    return r.stdout, r.returncode


def test_clients_outside_the_access_list_are_refused(start_sockd):
    s = start_sockd("metrics 127.0.0.1:0 127.0.0.1/32\n" + PERMIT_LOCAL, workers=1)
    url = metrics_url(s)
    assert curl_status(url, "--interface", "127.0.0.1") == ("200", 0)
    code, rc = curl_status(url, "--interface", "127.0.0.2")
    assert code == "000" and rc in (52, 56), (code, rc)      # closed without a word
    s.wait_log(r"metrics: refused a connection from 127\.0\.0\.2 \(not in the metrics access list")
    text = scrape(url)
    assert sample(text, "sockd_metrics_refused_total") == 1


@pytest.mark.serial
def test_only_get_metrics_and_a_stalled_client_stalls_nothing(start_sockd, www):
    s = start_sockd("metrics 127.0.0.1:0\n" + PERMIT_LOCAL, workers=1)
    url = metrics_url(s)
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    assert curl_status(url.replace("/metrics", "/"))[0] == "404"
    assert curl_status(url, "-X", "POST")[0] == "405"
    assert curl_status(url, "--http1.0")[0] == "200"
    # half a request, never finished: neither the endpoint nor the SOCKS service waits for it
    stalled = socket.create_connection((host, port), 5)
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    assert "sockd_sessions_total" in scrape(url, timeout=3)
    assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"
    assert time.monotonic() - t0 < 2
    # a head that never ends is cut off at its limit
    big = socket.create_connection((host, port), 5)
    big.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 9000)
    big.settimeout(5)
    assert big.recv(100).startswith(b"HTTP/1.1 431 ")
    big.close()
    # garbage
    bad = socket.create_connection((host, port), 5)
    bad.sendall(b"HELLO\r\n\r\n")
    bad.settimeout(5)
    assert bad.recv(100).startswith(b"HTTP/1.1 400 ")
    bad.close()
    stalled.close()


def test_a_stalled_metrics_client_is_closed_after_the_endpoints_timeout(start_sockd):
    # not serial: it waits out the endpoint's 5 s, which a neighbour's load does not move by seconds
    s = start_sockd("metrics 127.0.0.1:0\n" + PERMIT_LOCAL, workers=1)
    url = metrics_url(s)
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    stalled = socket.create_connection((host, port), 5)
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    stalled.settimeout(10)
    assert stalled.recv(100) == b""
    assert 4 < time.monotonic() - t0 < 8
    stalled.close()


def test_quota_use_and_a_refusal_by_quota(start_sockd, www, tmp_path):
    db = tmp_path / "accounting.db"
    s = start_sockd("listen 127.0.0.1:0\nmetrics 127.0.0.1:0\naccounting database %s\naccounting interval 0.5\n"
                    "quota address 127.0.0.1 100 per day\n" % db + PERMIT_LOCAL, workers=1)
    url = metrics_url(s)
    series = 'sockd_quota_used_bytes{key="address 127.0.0.1",period="day",quota="%s:5"}' % s.conf_path
    assert sample(scrape(url), series) is None                # no use yet: no series
    assert curl_socks(s.port, www.url("/hello.txt")).stdout == "200"      # more than 100 bytes
    wait_for(lambda: (sample(scrape(url), series) or 0) > 100, 10, what="the quota's use")
    text = scrape(url)
    assert sample(text, series.replace("used_bytes", "limit_bytes")) == 100
    assert curl_socks(s.port, www.url("/hello.txt")).stdout == "000"      # refused: the quota is reached
    wait_for(lambda: sample(scrape(url), 'sockd_limit_refusals_total{limit="quota"}') == 1, 10,
             what="the refusal by quota")
    assert sample(scrape(url), REFUSED) == 1
