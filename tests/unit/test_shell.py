"""sockd.shell: the % expansion of rule commands and the Runner.

``expand``, ``sanitise`` and ``check`` are pure: examples, and hypothesis
for the promise that nothing a client sends reaches the shell as syntax.
``values_for`` is given a session-like object (names looked up by a fake).
The Runner runs real /bin/sh commands on its own threads, writing into the
test's temporary directory; each test stops the threads it started.
"""

import queue
import string
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import protocol as P
from sockd import shell

from loopkit import RecordingLog

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- % expansion (moved here from test_identity_units.py) -------------------------------------------

VALUES = {"A": "host.example", "a": "10.1.2.3", "c": "connect", "p": "42", "S": "telnet", "s": "23",
          "U": "root", "u": "joe", "Z": "dst.example", "z": "10.9.9.9"}


def test_expand_every_token():
    t = "%A %a %c %p %S %s %U %u %Z %z %% %x"
    assert shell.expand(t, VALUES) == \
        "host.example 10.1.2.3 connect 42 telnet 23 root joe dst.example 10.9.9.9 % "


@pytest.mark.parametrize("hostile", ["x;touch /tmp/F", "$(touch /tmp/F)", "`touch /tmp/F`",
                                     "a|b&c>d<e", "'quoted'\"q\"", "new\nline", "sp ace", "é", "x\\",
                                     "{a,b}", "*?[]", "#x", "~root", "!", "x=y", "tab\there", "\x01\x7f"])
def test_client_values_cannot_become_shell_syntax(hostile):
    out = shell.expand("echo %u", dict(VALUES, u=hostile))
    value = out[len("echo "):]
    assert all(c in shell.SAFE for c in value), value
    assert len(value) == len(hostile)


@pytest.mark.parametrize("value,becomes", [
    ("x\\", "x_"), ("\\", "_"), ("a!b", "a_b"), ("PATH=/tmp", "PATH_/tmp"), ("-rf", "_rf"), ("--", "_-"),
    ("a-b", "a-b"), ("", "_"), ("%u", "%u"), ("joe@example.com", "joe@example.com"),
    ("fe80::1%eth0", "fe80::1%eth0"), ("a+b,c:d./e_f", "a+b,c:d./e_f"), ("日本", "__")])
def test_what_a_value_becomes(value, becomes):
    assert shell.sanitise(value) == becomes


def test_the_safe_set_is_exactly_this():
    """sockd.conf(5) and socks.conf(5) name these characters; a change here
    is a change there."""
    assert "".join(sorted(shell.SAFE - set(string.ascii_letters + string.digits))) == "%+,-./:@_"
    assert shell.SAFE >= set(string.ascii_letters + string.digits)


def test_template_is_the_administrators_and_kept():
    assert shell.expand("mail -s 'hi %u' root; true", VALUES) == "mail -s 'hi joe' root; true"


def test_a_lone_percent_at_the_end_and_missing_values():
    assert shell.expand("100%", VALUES) == "100%"
    assert shell.expand("[%u]", {}) == "[]"
    assert shell.expand("%s", {"s": 23}) == "23"


def test_command_checks():
    assert shell.check("echo hi") is None
    assert "no alphanumeric" in shell.check("%%% ;")
    assert "too long" in shell.check("x" * (shell.MAX_COMMAND + 1))


@FAST
@given(st.dictionaries(st.sampled_from("AacpSsUuZz"), st.text(max_size=40)),
       st.lists(st.one_of(st.sampled_from(["%A", "%a", "%c", "%p", "%S", "%s", "%U", "%u", "%Z", "%z", "%%", "%q"]),
                          st.text(st.characters(blacklist_characters="%"), max_size=5)), max_size=12))
def test_only_the_templates_own_text_is_unsanitised(values, parts):
    """Whatever the values, expanding is the template with each token
    replaced by its value cut to the safe characters (one per character)."""
    want = "".join("%" if p == "%%" else
                   (shell.sanitise(values[p[1]]) if p[1] in values else "") if p.startswith("%") and len(p) == 2
                   else p for p in parts)
    assert shell.expand("".join(parts), values) == want


@FAST
@given(st.text(max_size=80))
def test_sanitise_keeps_the_length_and_the_safe_characters(text):
    out = shell.sanitise(text)
    assert len(out) == max(1, len(text)) and set(out) <= shell.SAFE
    assert all(o == t for o, t in zip(out, text) if t in shell.SAFE and t != "-") and out[0] != "-"
    assert out[1:] == "".join(c if c in shell.SAFE else "_" for c in text[1:])


# The template positions a value may stand in: a word of its own, inside
# "...", inside '...', and glued to the template's text on both sides; the
# test's printf prints each argument the shell made on a line of its own.
POSITIONS = """printf '<%%s>\\n' %u "%u" '%u' x%uy "x%uy" 'x%uy' END"""


def split_by_the_shell(value):
    r = subprocess.run(["/bin/sh", "-c", shell.expand(POSITIONS, {"u": value})], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0 and not r.stderr, (value, r.stderr)
    return r.stdout.splitlines()


@pytest.mark.parametrize("value", ["\\", "x\\", "\\'", '"', "'", "$HOME", "${x}", "`id`", "$(id)", ";id", "&", "|",
                                   "<x", ">x", "(", ")", " ", "\t", "\n", "*", "?", "[a]", "#", "~", "~/", "!",
                                   "{a,b}", "{1..3}", "=", "a=b", "%", "%u", "", "-n", "\x01", "\x7f", "é", "\u2028",
                                   "^", "a b c"])
def test_the_shell_splits_exactly_as_the_template_says(value):
    s = shell.sanitise(value)
    assert split_by_the_shell(value) == ["<%s>" % w for w in (s, s, s, "x%sy" % s, "x%sy" % s, "x%sy" % s, "END")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=30))
def test_no_value_changes_the_split(value):
    s = shell.sanitise(value)
    assert split_by_the_shell(value) == ["<%s>" % w for w in (s, s, s, "x%sy" % s, "x%sy" % s, "x%sy" % s, "END")]


class Snap:
    client_ip = "10.1.2.3"
    dst_ip = "192.0.2.9"
    dst_host = None
    dst_port = 23
    command = P.CMD_CONNECT
    user = "joe"
    realuser = None


def test_values_for_a_session(monkeypatch):
    names = {"10.1.2.3": "client.example", "192.0.2.9": "dst.example"}
    monkeypatch.setattr(shell, "lookup_name", names.get)
    v = shell.values_for(Snap(), pid=77)
    assert v == {"A": "client.example", "a": "10.1.2.3", "c": "connect", "p": "77", "S": "telnet", "s": "23",
                 "U": "unknown", "u": "joe", "Z": "dst.example", "z": "192.0.2.9"}
    bind = Snap()
    bind.command, bind.dst_host, bind.realuser, bind.user = P.CMD_BIND, "ftp.example", "root", None
    v = shell.values_for(bind, pid=77)
    assert (v["c"], v["Z"], v["U"], v["u"]) == ("bind", "ftp.example", "root", "unknown")
    monkeypatch.setattr(shell, "lookup_name", lambda ip: None)
    v = shell.values_for(Snap(), pid=77)
    assert (v["A"], v["Z"]) == ("10.1.2.3", "192.0.2.9")


def test_lookup_name_of_nothing():
    assert shell.lookup_name(None) is None and shell.lookup_name("") is None


# --- the Runner ---------------------------------------------------------------------------------------

@pytest.fixture
def runner():
    made = []

    def make(limit=2):
        r = shell.Runner(RecordingLog(), limit)
        made.append(r)
        return r
    yield make
    for r in made:
        r.drain(5)
        if r.queue is not None:
            for _ in r.threads:
                r.queue.put(None)
        for t in r.threads:
            t.join(5)
            assert not t.is_alive()


def wait_for(pred, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_a_command_runs_with_its_values_on_a_thread_of_its_own(runner, tmp_path):
    r = runner()
    out = tmp_path / "out"
    callers = []

    def values():
        callers.append(threading.current_thread().name)
        return dict(VALUES, u="joe; rm -rf /")
    r.submit("echo %%u %%c > %s; cat >> %s" % (out, out), values, "unit.conf:3")
    assert wait_for(lambda: out.exists() and out.read_text().endswith("\n"))
    assert out.read_text() == "joe__rm_-rf_/ connect\n"      # and stdin was /dev/null: cat added nothing
    assert callers == ["sockd-shell"]
    assert wait_for(lambda: r.log.having("running shell command of unit.conf:3", "debug"))


def test_a_failing_command_is_logged(runner):
    r = runner()
    r.submit("exit 3", dict, "unit.conf:4")
    assert wait_for(lambda: r.log.lines("error"))
    assert r.log.lines("error") == ["shell command of unit.conf:4 exited with status 3: exit 3"]


def test_a_command_without_letters_is_not_run(runner):
    r = runner()
    r.submit("%u", lambda: {"u": ";;"}, "x")
    assert wait_for(lambda: r.log.lines("error"))
    assert "contains no alphanumeric characters" in r.log.lines("error")[0]


def test_a_failure_to_build_the_values_is_logged_and_the_runner_goes_on(runner, tmp_path):
    r = runner(limit=1)

    def broken():
        raise KeyError("u")
    r.submit("echo %u", broken, "x")
    out = tmp_path / "after"
    r.submit("touch %s" % out, dict, "y")
    assert wait_for(out.exists)
    assert r.log.lines("error") == ["shell command: 'u'"]


def test_threads_are_bounded_and_the_queue_too(runner):
    r = runner(limit=1)
    gate = threading.Event()
    r.submit("%%", lambda: gate.wait(2) and {}, "held")    # keeps the one thread busy
    assert wait_for(lambda: r.busy == 1)
    for _ in range(shell.MAX_QUEUED + 3):
        r.submit("%%", dict, "queued")
    assert len(r.threads) == 1
    assert r.log.lines("error") == ["too many shell commands waiting; not running the one of queued"] * 3
    gate.set()
    assert r.drain(5)


def test_drain_waits_for_a_running_command_and_gives_up_in_time(runner, tmp_path):
    r = runner()
    assert r.drain(0.1)                              # nothing ever queued
    out = tmp_path / "slow"
    r.submit("sleep 0.15; touch %s" % out, dict, "x")
    assert wait_for(lambda: r.busy == 1)
    assert not r.drain(0.05)
    assert r.drain(5) and out.exists()


class SlowHandOver(queue.Queue):
    """A queue whose get() returns late: it stretches the moment between a
    worker taking a job and counting itself busy, which a thread switch can
    always open."""

    def get(self, *args, **kw):
        item = super().get(*args, **kw)
        if item is not None:
            time.sleep(0.2)
        return item


def test_drain_waits_for_a_command_just_taken_from_the_queue(runner, tmp_path):
    r = runner()
    r.queue = SlowHandOver(shell.MAX_QUEUED)
    out = tmp_path / "ran"
    r.submit("touch %s" % out, dict, "unit.conf:1")
    assert r.drain(5)
    assert out.exists()
