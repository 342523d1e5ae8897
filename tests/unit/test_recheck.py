"""sockd.recheck: after a reload, close the live connections the new
configuration refuses.

Pure apart from reverse lookups (replaced here by a counting fake): the
sessions are small fakes with the attributes recheck reads, in the states
of sockd.session.State, and the configurations are parsed from text.
Checked: which states are judged, the private-destination guard and the
deciding line as a new request would meet them, the identd answer taken
as the user, names looked up once per address and only when a rule names
hosts, and the log line of each closed session.
"""

import pytest

from sockd import protocol as P
from sockd import recheck as RC
from sockd import rules as R
from sockd.session import State

from loopkit import RecordingLog, parse_conf


class Live:
    def __init__(self, client_ip="10.1.1.1", dst_ip="192.0.2.9", dst_port=80, state=State.RELAY,
                 command=P.CMD_CONNECT, user=None, realuser=None, dst_host=None, peer=None):
        self.client_ip, self.dst_ip, self.dst_port, self.state = client_ip, dst_ip, dst_port, state
        self.peer = peer                # BIND: the host that connected
        self.src_key = R.ip_key(client_ip)
        self.command, self.user, self.realuser, self.dst_host = command, user, realuser, dst_host
        self.closed = 0

    def desc(self):
        return "Connect from %s to %s" % (self.client_ip, self.dst_ip)

    def close(self):
        self.closed += 1


@pytest.fixture
def names(monkeypatch):
    asked = []
    table = {"10.1.1.1": ("client.example",), "192.0.2.9": ("www.example",)}

    def reverse_names(ip):
        asked.append(ip)
        return table.get(ip, ())
    monkeypatch.setattr(RC, "reverse_names", reverse_names)
    return asked


def recheck(sessions, text):
    log = RecordingLog()
    n = RC.recheck(sessions, parse_conf(text, "new.conf"), log)
    return n, log.lines("notice")


def test_relays_and_bind_waits_the_new_rules_refuse_are_closed(names):
    keep = Live(dst_ip="192.0.2.9")
    gone = Live(dst_ip="192.0.2.66")
    waiting = Live(dst_ip="192.0.2.66", state=State.BINDWAIT, command=P.CMD_BIND)
    n, lines = recheck([keep, gone, waiting], "deny 0/0 192.0.2.66/32\npermit 0/0\n")
    assert n == 2 and (keep.closed, gone.closed, waiting.closed) == (0, 1, 1)
    assert lines == ["refused -- Connect from 10.1.1.1 to 192.0.2.66: no longer permitted after reload "
                     "(denied by new.conf:1)"] * 2
    assert names == []                              # no rule names hosts: no lookups


@pytest.mark.parametrize("state", [State.PROXYHDR, State.NEG, State.WAIT, State.UDP, State.CLOSED])
def test_sessions_not_relaying_are_left_alone(state):
    s = Live(state=state)
    assert recheck([s], "deny 0/0\n") == (0, []) and s.closed == 0


def test_a_session_without_a_fixed_destination_is_left_alone():
    s = Live(dst_ip=None)
    assert recheck([s], "deny 0/0\n")[0] == 0


def test_no_matching_line_names_the_file():
    s = Live()
    assert recheck([s], "permit 10.9.0.0/16\n")[1] == [
        "refused -- Connect from 10.1.1.1 to 192.0.2.9: no longer permitted after reload "
        "(no matching rule in new.conf)"]


def test_the_private_guard_applies_as_to_a_new_request():
    outside = Live(client_ip="198.51.100.7", dst_ip="127.0.0.1")
    local = Live(client_ip="127.0.0.1", dst_ip="127.0.0.1")
    n, lines = recheck([outside, local], "permit 0/0\n")
    assert n == 1 and outside.closed and not local.closed
    assert lines == ["refused -- Connect from 198.51.100.7 to 127.0.0.1: no longer permitted after reload "
                     "(127.0.0.1 is private to this host (deny-private-destinations))"]


def test_the_identd_answer_is_the_user_and_identd_is_not_asked_again():
    by_ident = Live(user=None, realuser="alice")
    claimed = Live(user="bob", realuser="alice")
    n, _ = recheck([by_ident, claimed], "permit ?=I *=alice 0/0\n")
    assert n == 1 and claimed.closed and not by_ident.closed


def test_names_are_looked_up_once_per_address_and_only_when_rules_name_hosts(names):
    sessions = [Live(), Live(), Live(dst_ip="192.0.2.66", dst_host="www.example")]
    n, _ = recheck(sessions, "deny client.example www.example\npermit 0/0\n")
    assert n == 3
    assert sorted(names) == ["10.1.1.1", "192.0.2.66", "192.0.2.9"]


def test_a_destination_named_by_the_client_counts_as_its_name(names):
    s = Live(dst_ip="192.0.2.66", dst_host="blocked.example")
    assert recheck([s], "deny 0/0 blocked.example\npermit 0/0\n")[0] == 1


def test_ask_for_builds_the_question_of_a_new_request_without_identd():
    s = Live(user=None, realuser="carol", dst_host="www.example", command=P.CMD_BIND)
    rs = parse_conf("permit 0/0\n").ruleset
    ask = RC.ask_for(s, rs, {})
    assert (ask.src, ask.dsts, ask.port, ask.command, ask.user, ask.ident_checks, ask.dst_host) == (
        R.ip_key("10.1.1.1"), ["192.0.2.9"], 80, P.CMD_BIND, "carol", False, "www.example")
    assert RC.ask_for(Live(dst_ip=""), rs, {}) is None


def test_a_bind_is_judged_by_the_host_that_connected_or_its_client_until_then():
    rs = parse_conf("permit 0/0\n").ruleset
    connected = Live(dst_ip="0.0.0.0", command=P.CMD_BIND, peer="192.0.2.5")
    ask = RC.ask_for(connected, rs, {})
    assert (ask.dsts, ask.dst_host) == (["192.0.2.5"], None)
    waiting = Live(dst_ip="0.0.0.0", command=P.CMD_BIND, state=State.BINDWAIT)
    assert RC.ask_for(waiting, rs, {}).dsts is None
    # the new rules no longer let the client reach the host that connected
    n, _ = recheck([connected, waiting], "deny 0/0 192.0.2.5/32\npermit 0/0\n")
    assert n == 1 and connected.closed and not waiting.closed
    n, _ = recheck([waiting], "permit 10.9.0.0/16\n")               # no permit line for its client
    assert n == 1 and waiting.closed
