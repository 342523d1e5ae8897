"""`make bench` in its quickest mode against sockd only: the table prints with
every column, the targets section follows, and nothing it started is left."""

import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, SOCKD, need

BENCH = os.path.join(ROOT, "bench", "bench.py")
COLUMNS = ["conn/s", "p99 us", "rate err", "down MB/s", "up MB/s", "32x MB/s", "held", "KB/sess",
           "rules c/s", "rules p99", "steady %"]


def left_running(marker):
    """Processes whose command line names marker (the bench's work directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open("/proc/%s/stat" % d) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append((int(d), cmd))
    return found


def test_quick_bench_prints_the_table(tmp_path):
    need("gcc")
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the bench's work directory lands here
    cmd = [sys.executable, BENCH, "--quick", "--only", "sockd", "--sockd", SOCKD,
           "--mib", "32", "--hold", "200", "--steady", "2000"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # the bench stops what it started, then exits
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        pytest.fail("bench did not finish in 90 s:\n" + out + err)
    assert p.returncode == 0, out + err

    lines = out.splitlines()
    header = next((l for l in lines if l.startswith("server ")), None)
    assert header is not None, out
    for col in COLUMNS:
        assert col in header, (col, header)
    assert re.search(r"^machine: nproc \d+, kernel \S+, CPU ", out, re.M), out
    assert re.search(r"^sockd bench, \d{4}-\d\d-\d\d ", out, re.M), out

    rows = {l.split()[0]: l for l in lines if l.startswith("sockd-")}
    assert set(rows) == {"sockd-threads", "sockd-fork"}, out
    # "down MB/s" is two words in the header, one cell in a row
    threads = rows["sockd-threads"].split()[1:]
    assert len(threads) == len(COLUMNS), rows["sockd-threads"]
    cell = dict(zip(COLUMNS, threads))
    assert float(cell["conn/s"]) > 0 and float(cell["p99 us"]) > 0, cell
    for col in ("down MB/s", "up MB/s", "32x MB/s", "rules c/s"):
        assert float(cell[col]) > 0, (col, cell)
    assert cell["held"] == "200", cell
    float(cell["KB/sess"]), float(cell["steady %"])
    fork = dict(zip(COLUMNS, rows["sockd-fork"].split()[1:]))
    assert float(fork["conn/s"]) > 0 and float(fork["rules c/s"]) > 0, fork
    assert fork["held"] == "-", fork

    targets = out.split("TARGETS", 1)[1]
    for label in ("conn/s vs Dante", "memory per idle session", "fork model conn/s", "steady state"):
        assert label in targets, targets
    assert re.search(r"\d+ PASS, \d+ FAIL", targets), targets
    assert "RATIOS conn_vs_dante=" in out

    assert left_running(str(tmp_path)) == [], "the bench left processes running"
