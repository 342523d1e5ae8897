"""`make bench` in its quickest mode against sockd only: the table prints with
every column (CPU per connection and per GB among them), the targets section
follows, the JSON is written and holds the table, the chart is written when
matplotlib is there (with CI=true it must be), and nothing it started is
left.  No timing is asserted: timings on shared machines are noise."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, SOCKD, need, proc_state

BENCH = os.path.join(ROOT, "bench", "bench.py")
COLUMNS = ["conn/s", "p99 us", "rate err", "CPU us/conn", "down MB/s", "up MB/s", "32x MB/s", "CPU ms/GB",
           "held", "KB/sess", "rules c/s", "rules p99", "steady %"]


def left_running(marker):
    """Processes whose command line names marker (the bench's work directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            state = proc_state(d)
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append((int(d), cmd))
    return found


def test_quick_bench_prints_the_table(tmp_path):
    need("gcc")
    have_mpl = importlib.util.find_spec("matplotlib") is not None
    if not have_mpl and os.environ.get("CI") == "true":
        pytest.fail("matplotlib is missing (tests/requirements.txt; make test-deps)")
    out_dir = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the bench's work directory lands here
    cmd = [sys.executable, BENCH, "--quick", "--only", "sockd,sockd-affinity", "--sockd", SOCKD, "--out", str(out_dir),
           "--secs", "0.5", "--mib", "32", "--hold", "200", "--rules", "200", "--steady", "2000"]
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
    assert "Traceback" not in out + err, out + err

    lines = out.splitlines()
    header = next((l for l in lines if l.startswith("server ")), None)
    assert header is not None, out
    for col in COLUMNS:
        assert col in header, (col, header)
    assert re.search(r"^machine: nproc \d+, kernel \S+, CPU ", out, re.M), out
    assert re.search(r"^sockd bench, \d{4}-\d\d-\d\d ", out, re.M), out

    table = lines[lines.index(header) + 1:]
    table = table[:table.index("") if "" in table else len(table)]
    rows = {l.split()[0]: l for l in table}
    assert set(rows) == {"sockd-threads", "sockd-affinity", "sockd-fork"}, out
    # "down MB/s" is two words in the header, one cell in a row
    threads = rows["sockd-threads"].split()[1:]
    assert len(threads) == len(COLUMNS), rows["sockd-threads"]
    cell = dict(zip(COLUMNS, threads))
    assert float(cell["conn/s"]) > 0 and float(cell["p99 us"]) > 0, cell
    for col in ("CPU us/conn", "down MB/s", "up MB/s", "32x MB/s", "CPU ms/GB", "rules c/s"):
        assert float(cell[col]) > 0, (col, cell)
    assert cell["held"] == "200", cell
    float(cell["KB/sess"]), float(cell["steady %"])
    fork = dict(zip(COLUMNS, rows["sockd-fork"].split()[1:]))
    assert float(fork["conn/s"]) > 0 and float(fork["rules c/s"]) > 0, fork
    assert float(fork["CPU us/conn"]) > 0 and float(fork["CPU ms/GB"]) > 0, fork
    assert fork["held"] == "-", fork
    steer = dict(zip(COLUMNS, rows["sockd-affinity"].split()[1:]))
    assert float(steer["conn/s"]) > 0 and float(steer["CPU us/conn"]) > 0 and steer["held"] == "-", steer
    assert re.search(r"^  affinity cpu \(a worker per CPU, clients steered to it\) +conn/s x[\d.]+, ", out, re.M), out
    assert re.search(r"^200-line rule file \(sockd-threads\): sockd -V [\d.]+ s, start-up to 'listening' "
                     r"[\d.]+ s, reload \(SIGHUP to 'reloaded'\) [\d.]+ s$", out, re.M), out

    targets = out.split("TARGETS", 1)[1]
    for label in ("conn/s vs microsocks", "conn/s vs microsocks, affinity cpu", "one session down vs direct", "32 sessions vs direct",
                  "fork model conn/s", "idle sessions held", "memory per idle session", "conn/s vs the 1-rule file",
                  "sockd -V", "start-up", "reload", "conn/s vs Dante", "steady state"):
        assert label in targets, (label, targets)
    assert re.search(r"\d+ PASS, \d+ FAIL", targets), targets
    assert "RATIOS conn_vs_dante=" in out

    written = re.findall(r"^wrote (\S+)$", out, re.M)
    jsons = [w for w in written if w.endswith(".json")]
    assert len(jsons) == 1 and os.path.dirname(jsons[0]) == str(out_dir), out
    with open(jsons[0]) as f:
        res = json.load(f)
    assert res["columns"] == COLUMNS
    assert set(res["rows"]) == {"sockd-threads", "sockd-affinity", "sockd-fork"}
    for name, row in res["rows"].items():
        for col in ("conn/s", "CPU us/conn", "down MB/s", "CPU ms/GB"):
            assert isinstance(row[col], (int, float)) and row[col] > 0, (name, col, row)
    assert res["rows"]["sockd-threads"]["held"] == 200
    assert res["arguments"]["hold"] == 200 and res["machine"]["nproc"] == os.cpu_count()
    assert res["targets"] and all(set(t) == {"measure", "target", "measured", "result"} for t in res["targets"])
    assert set(res["rules"]) >= {"check secs", "start secs", "reload secs"}
    assert set(res["ratios"]) == {"sockd-threads", "sockd-affinity", "sockd-fork"}
    pngs = [w for w in written if w.endswith(".png")]
    if have_mpl:
        assert len(pngs) == 1, out
        with open(pngs[0], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert pngs == [] and "pip install 'sockd[bench]'" in out, out

    assert left_running(str(tmp_path)) == [], "the bench left processes running"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tree_cpu_reads_nanoseconds_not_ticks():
    """The bench's CPU cells come from each process's CPU-time clock, not
    from /proc/PID/stat's 10 ms ticks: a child that spins 35 ms reads as
    35 ms or a little more, where ticks would say 30 or 40 (and a smoke
    run's relay, under a tick per worker, said 0: CI failed on it)."""
    bench = load_bench()
    me = bench.process_cpu(os.getpid())
    assert me is not None and abs(me - (os.times().user + os.times().system)) < 0.05
    child = subprocess.Popen([sys.executable, "-c",
                              "import os,sys,time\n"
                              "t = time.process_time()\n"
                              "while time.process_time() - t < 0.035: pass\n"
                              "sys.stdout.write('%.9f\\n' % time.process_time()); sys.stdout.flush()\n"
                              "sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        own = float(child.stdout.readline())     # the child's own figure, then it waits
        seen = bench.tree_cpu(child.pid)
        assert own <= seen < own + 0.005, (own, seen)
        assert seen != round(seen, 2), seen    # not a whole number of 10 ms ticks
    finally:
        child.stdin.close()
        child.wait(10)
    assert bench.process_cpu(child.pid) is None   # gone: no figure, no exception


def test_a_failed_phase_reads_fail_on_the_chart_not_a_dash():
    """microsocks' upload fails (it relays no half-close): its bar must
    say so, as the table does, and not look like a cell that has no
    figure (direct's CPU)."""
    bench = load_bench()
    assert bench.bar_label(bench.FAIL) == "fail"
    assert bench.bar_label(None) == "-"
    assert bench.bar_label(3290.4) == "3290" and bench.bar_label(96.4) == "96.4"
