"""sockd.decision: the one answer to "may this client go there?".

decide(Ask, config) is pure, so it is tested on a table of (configuration
text, Ask) -> (allowed, deciding line, why, and the rest of the Verdict),
with configurations parsed by sockd.config.parse_text and this host's
addresses set by the test: first match wins, deny, no match, *= users and
userfiles, SOCKS 5 without authentication (where *= sees identd's answer
on ?=i/?=I lines only), the identd matrix, the private-destination guard,
several candidate addresses, the UDP grant, and Verdict.reason().  The
same table is run for every caller's form of the question (CONNECT, BIND,
a datagram, a re-check), and hypothesis checks the properties that tie the
verdict to the rules engine for any small rule file.
"""

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import decision as D
from sockd import netinfo
from sockd import protocol as P
from sockd import rules as R
from sockd.ident import ERROR, UNREACHABLE, USERID

from loopkit import parse_conf

OWN = "192.0.2.10"                     # "this host" in every configuration below
OUTSIDE = "198.51.100.7"               # a client that is not on loopback


def key(ip):
    return R.ip_key(ip)


CONFS = {
    "rules": """\
deny 10.0.0.0/8 192.0.2.66/32 : echo refused %u
permit 10.0.0.0/8
deny 172.16.0.0/12 192.0.2.0/24 eq 25
permit *=alice,{userfile} 172.16.0.0/12
""",
    "guard": """\
permit 0/0 127.0.0.2/32
permit 0/0 localhost
permit 0/0
""",
    "zero-mask": "permit 0.0.0.0 0.0.0.0 0.0.0.0 0.0.0.0\n",
    "deny-any": "deny 0/0\n",
    "candidates": "deny 0/0 192.0.2.7/32\npermit 0/0\n",
    "ident": """\
permit ?=i 10.0.0.0/8
permit ?=I 172.16.0.0/12
permit ?=n 192.168.0.0/16
permit 0/0
""",
    "s5users": """\
permit ?=n *=alice 10.0.0.0/8 192.0.2.1/32
permit ?=i *=alice 10.0.0.0/8
deny 10.0.0.0/8
""",
    "udp": "deny 10.0.0.0/8 192.0.2.1/32\npermit 10.0.0.0/8\npermit *=alice 172.16.0.0/12\n",
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    userfile = tmp_path_factory.mktemp("decision") / "staff"
    userfile.write_text("carol dave # the second shift\n")
    made = {}

    def get(name, mode="auto"):
        if (name, mode) not in made:
            text = CONFS[name].replace("{userfile}", str(userfile))
            text += "deny-private-destinations %s\n" % mode       # after the rules: line numbers stay
            made[name, mode] = parse_conf(text, "unit.conf", own={key(OWN)})
        return made[name, mode]
    return get


PRIVATE = "%s is private to this host (deny-private-destinations)"
UNSPECIFIED = "%s is the unspecified address: this host, to the kernel"

# (id, configuration, deny-private-destinations, Ask arguments, expected Verdict fields)
# Ask arguments: src, dsts, and keywords of decision.Ask; "line" is the deciding rule's line.
CASES = [
    # --- the rules: first match wins, deny, no match, ports, users ---
    ("first match wins: the deny line before the permit", "rules", "auto",
     ("10.1.2.3", ["192.0.2.66"]), dict(allowed=False, line=1, why=None, reason=" by unit.conf:1",
                                        run_rule_command=True)),
    ("the permit line after it", "rules", "auto",
     ("10.1.2.3", ["192.0.2.7"]), dict(allowed=True, line=2, why=None, addresses=["192.0.2.7"])),
    ("no line matches", "rules", "auto",
     ("203.0.113.9", ["192.0.2.7"]), dict(allowed=False, line=None, why=None,
                                          reason=": no matching rule in unit.conf", run_rule_command=False)),
    ("a port test decides", "rules", "auto",
     ("172.16.5.5", ["192.0.2.1"], dict(port=25, user="alice")), dict(allowed=False, line=3)),
    ("the port test passes on", "rules", "auto",
     ("172.16.5.5", ["192.0.2.1"], dict(port=80, user="alice")), dict(allowed=True, line=4)),
    ("*= names the user", "rules", "auto",
     ("172.16.5.5", ["203.0.113.1"], dict(user="alice")), dict(allowed=True, line=4)),
    ("*= names a userfile that holds the user", "rules", "auto",
     ("172.16.5.5", ["203.0.113.1"], dict(user="carol")), dict(allowed=True, line=4)),
    ("a user in neither", "rules", "auto",
     ("172.16.5.5", ["203.0.113.1"], dict(user="mallory")), dict(allowed=False, line=None)),
    ("no user at all", "rules", "auto",
     ("172.16.5.5", ["203.0.113.1"], dict(user=None)), dict(allowed=False, line=None)),
    ("SOCKS 5 without auth: a *= line without ?= does not ask identd", "rules", "auto",
     ("172.16.5.5", ["203.0.113.1"], dict(user=None, user_from_ident=True)),
     dict(allowed=False, line=None, need_ident=False)),

    # --- the private-destination guard ---
    ("guard: loopback behind a permit to any", "guard", "auto",
     (OUTSIDE, ["127.0.0.1"]), dict(allowed=False, line=3, why=PRIVATE % "127.0.0.1",
                                   reason=": " + PRIVATE % "127.0.0.1", run_rule_command=False)),
    ("guard: all of 127/8", "guard", "auto", (OUTSIDE, ["127.8.9.10"]), dict(allowed=False, line=3)),
    ("guard: link-local (cloud metadata)", "guard", "auto",
     (OUTSIDE, ["169.254.169.254"]), dict(allowed=False, line=3, why=PRIVATE % "169.254.169.254")),
    ("guard: this host's own address", "guard", "auto", (OUTSIDE, [OWN]), dict(allowed=False, line=3)),
    ("guard: the unspecified address", "guard", "auto", (OUTSIDE, ["0.0.0.0"]), dict(allowed=False)),
    ("the unspecified address, whatever the rules", "guard", "no", (OUTSIDE, ["0.0.0.0"]),
     dict(allowed=False, line=None, why=UNSPECIFIED % "0.0.0.0")),
    ("... all of 0.0.0.0/8", "guard", "no", ("127.0.0.1", ["0.1.2.3"]), dict(allowed=False, line=None)),
    ("... and IPv6's ::", "guard", "no", ("::1", ["::"]), dict(allowed=False, why=UNSPECIFIED % "::")),
    ("IPv4-compatible loopback is loopback", "guard", "auto",
     (OUTSIDE, ["::127.0.0.1"]), dict(allowed=False, line=3, why=PRIVATE % "::127.0.0.1")),
    ("IPv4-translated loopback is loopback", "guard", "auto",
     (OUTSIDE, ["::ffff:0:127.0.0.1"]), dict(allowed=False, line=3, why=PRIVATE % "::ffff:0:127.0.0.1")),
    ("guard: IPv6 loopback", "guard", "auto", (OUTSIDE, ["::1"]), dict(allowed=False, line=3)),
    ("guard: IPv6 link-local", "guard", "auto", (OUTSIDE, ["fe80::1"]), dict(allowed=False, line=3)),
    ("guard: IPv4-mapped loopback", "guard", "auto",
     (OUTSIDE, ["::ffff:127.0.0.1"]), dict(allowed=False, why=PRIVATE % "::ffff:127.0.0.1")),
    ("guard: another host's address passes", "guard", "auto",
     (OUTSIDE, ["192.0.2.11"]), dict(allowed=True, line=3)),
    ("guard: a line naming the address literally opens it", "guard", "auto",
     (OUTSIDE, ["127.0.0.2"]), dict(allowed=True, line=1, addresses=["127.0.0.2"])),
    ("guard: a line naming the host does not open it, however the name resolves", "guard", "auto",
     (OUTSIDE, ["127.0.0.1"], dict(dst_host="localhost")), dict(allowed=False, line=2, why=PRIVATE % "127.0.0.1")),
    ("guard auto: a client on loopback may reach loopback", "guard", "auto",
     ("127.0.0.1", ["127.0.0.1"]), dict(allowed=True, line=3)),
    ("guard auto: ... also over IPv6", "guard", "auto", ("::1", ["::1"]), dict(allowed=True, line=3)),
    ("guard yes: not even a client on loopback", "guard", "yes",
     ("127.0.0.1", ["127.0.0.1"]), dict(allowed=False, line=3, why=PRIVATE % "127.0.0.1")),
    ("guard no: loopback open to anyone the line permits", "guard", "no",
     (OUTSIDE, ["127.0.0.1"]), dict(allowed=True, line=3)),
    ("guard no: link-local too", "guard", "no", (OUTSIDE, ["169.254.169.254"]), dict(allowed=True)),
    ("guard: a zero mask is a destination of 'any'", "zero-mask", "auto",
     (OUTSIDE, ["127.0.0.1"]), dict(allowed=False, line=1, why=PRIVATE % "127.0.0.1")),
    ("guard: a deny line refuses by itself, not by the guard", "deny-any", "auto",
     (OUTSIDE, ["127.0.0.1"]), dict(allowed=False, line=1, why=None, reason=" by unit.conf:1")),

    # --- several candidate addresses ---
    ("candidates: the permitted ones, in order", "candidates", "auto",
     (OUTSIDE, ["127.0.0.1", "192.0.2.7", "203.0.113.1", "::1", "203.0.113.2"]),
     dict(allowed=True, line=2, addresses=["203.0.113.1", "203.0.113.2"])),
    ("candidates: all refused, the first one's reason", "candidates", "auto",
     (OUTSIDE, ["127.0.0.1", "192.0.2.7"]), dict(allowed=False, line=2, why=PRIVATE % "127.0.0.1")),
    ("candidates: all refused, first by a deny line", "candidates", "auto",
     (OUTSIDE, ["192.0.2.7", "127.0.0.1"]), dict(allowed=False, line=1, why=None, run_rule_command=True)),
    ("candidates: what is not an address is skipped", "candidates", "auto",
     (OUTSIDE, ["not-an-address", "203.0.113.1"]), dict(allowed=True, addresses=["203.0.113.1"])),
    ("candidates: none at all", "candidates", "auto",
     (OUTSIDE, []), dict(allowed=False, line=None, reason=": no matching rule in unit.conf")),

    # --- the identd matrix (SOCKS 4: the client claims "fred") ---
    ("?=i: identd not asked yet", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user="fred")), dict(allowed=False, need_ident=True)),
    ("?=i: identd agrees", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user="fred", ident=(USERID, "fred"))),
     dict(allowed=True, line=1, user=None, alert=None, addresses=["203.0.113.1"])),
    ("?=i: identd names another user: 93 and an alert", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user="fred", ident=(USERID, "bob"))),
     dict(allowed=False, line=1, why="identd says the user is bob", alert="bob", code4=P.S4_BAD_ID,
          code5=P.REP_NOT_ALLOWED, reason=" by unit.conf:1: identd says the user is bob",
          run_rule_command=False)),
    ("?=i: identd unreachable is allowed", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user="fred", ident=(UNREACHABLE, "ECONNREFUSED"))),
     dict(allowed=True, line=1, alert=None)),
    ("?=i: an identd error is allowed", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user="fred", ident=(ERROR, "NO-USER"))), dict(allowed=True, line=1)),
    ("?=I: identd not asked yet", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred")), dict(allowed=False, need_ident=True)),
    ("?=I: identd agrees", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred", ident=(USERID, "fred"))), dict(allowed=True, line=2)),
    ("?=I: identd names another user: 93", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred", ident=(USERID, "bob"))),
     dict(allowed=False, line=2, code4=P.S4_BAD_ID, alert="bob")),
    ("?=I: identd unreachable: 92", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred", ident=(UNREACHABLE, "timed out"))),
     dict(allowed=False, line=2, why="cannot verify the user with identd", code4=P.S4_NO_IDENTD,
          code5=P.REP_NOT_ALLOWED, alert=None, reason=" by unit.conf:2: cannot verify the user with identd")),
    ("?=I: an identd error: 92", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred", ident=(ERROR, "HIDDEN-USER"))),
     dict(allowed=False, line=2, code4=P.S4_NO_IDENTD)),
    ("?=n wins over -I", "ident", "auto",
     ("192.168.1.1", ["203.0.113.1"], dict(user="fred", ident_default="I")),
     dict(allowed=True, line=3, need_ident=False)),
    ("-I on a line without ?=: asks", "ident", "auto",
     ("203.0.113.50", ["203.0.113.1"], dict(user="fred", ident_default="I")), dict(need_ident=True)),
    ("-I on a line without ?=: unreachable refuses with 92", "ident", "auto",
     ("203.0.113.50", ["203.0.113.1"], dict(user="fred", ident_default="I", ident=(UNREACHABLE, "x"))),
     dict(allowed=False, line=4, code4=P.S4_NO_IDENTD)),
    ("-i on a line without ?=: a mismatch refuses with 93", "ident", "auto",
     ("203.0.113.50", ["203.0.113.1"], dict(user="fred", ident_default="i", ident=(USERID, "eve"))),
     dict(allowed=False, line=4, code4=P.S4_BAD_ID, alert="eve")),
    ("no ?= and no -i/-I: identd is never asked", "ident", "auto",
     ("203.0.113.50", ["203.0.113.1"], dict(user="fred")), dict(allowed=True, line=4, need_ident=False)),
    ("datagrams and re-checks skip the matrix", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user="fred", ident_checks=False)),
     dict(allowed=True, line=2, need_ident=False)),
    ("SOCKS 5 without auth on ?=i: identd's user becomes the user", "ident", "auto",
     ("10.1.1.1", ["203.0.113.1"], dict(user=None, user_from_ident=True, ident=(USERID, "alice"))),
     dict(allowed=True, line=1, user="alice", alert=None)),
    ("SOCKS 5 without auth on ?=I: unreachable refuses", "ident", "auto",
     ("172.16.1.1", ["203.0.113.1"], dict(user=None, user_from_ident=True, ident=(UNREACHABLE, "x"))),
     dict(allowed=False, line=2, code4=P.S4_NO_IDENTD)),

    # --- SOCKS 5 without authentication and *= lists ---
    ("SOCKS 5 no auth: *= on a ?=i line needs identd first", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.1"], dict(user=None, user_from_ident=True)), dict(allowed=False, need_ident=True)),
    ("SOCKS 5 no auth: identd's answer matches *= on the ?=i line", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.1"], dict(user=None, user_from_ident=True, ident=(USERID, "alice"))),
     dict(allowed=True, line=2, user="alice")),
    ("SOCKS 5 no auth: ... not on the ?=n line before it", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.1"], dict(user=None, user_from_ident=True, ident=(USERID, "bob"))),
     dict(allowed=False, line=3, reason=" by unit.conf:3")),
    ("SOCKS 5 no auth: identd unreachable, no user for *=", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.1"], dict(user=None, user_from_ident=True, ident=(UNREACHABLE, "x"))),
     dict(allowed=False, line=3)),
    ("a claimed user meets *= on a ?=n line without identd", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.1"], dict(user="alice")), dict(allowed=True, line=1, need_ident=False)),
    ("a claimed user on a ?=i line: the matrix asks identd", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.2"], dict(user="alice")), dict(allowed=False, need_ident=True)),
    ("a claimed user on a ?=i line: identd agrees", "s5users", "auto",
     ("10.1.1.1", ["192.0.2.2"], dict(user="alice", ident=(USERID, "alice"))),
     dict(allowed=True, line=2, user=None)),

    # --- the UDP grant: dsts None, each datagram decided later ---
    ("UDP grant: a permit line for the client, whatever the deny lines", "udp", "auto",
     ("10.1.1.1", None, dict(command=D.UDP)), dict(allowed=True, line=2)),
    ("UDP grant: no permit line for the client", "udp", "auto",
     ("203.0.113.1", None, dict(command=D.UDP)),
     dict(allowed=False, line=None, why="no permit line for this client",
          reason=": no permit line for this client")),
    ("UDP grant: *= sees the claimed user", "udp", "auto",
     ("172.16.1.1", None, dict(command=D.UDP, user="alice")), dict(allowed=True, line=3)),
    ("UDP grant: *= without a user", "udp", "auto",
     ("172.16.1.1", None, dict(command=D.UDP)), dict(allowed=False, line=None)),
]


def make_ask(spec, **override):
    src, dsts = spec[0], spec[1]
    kw = dict(spec[2]) if len(spec) > 2 else {}
    kw.update(override)
    return D.Ask(key(src), dsts, kw.pop("port", 80), **kw)


def check(verdict, want):
    rule = verdict.rule
    assert verdict.allowed is want.get("allowed", verdict.allowed)
    if "line" in want:
        assert (rule.line if rule is not None else None) == want["line"]
    for field in ("why", "need_ident", "user", "alert", "code4", "code5", "run_rule_command"):
        if field in want:
            assert getattr(verdict, field) == want[field], field
    if "addresses" in want:
        assert list(verdict.addresses) == want["addresses"]
    if "reason" in want:
        assert verdict.reason("unit.conf") == want["reason"]
    if verdict.allowed:
        assert rule.action == R.PERMIT and not verdict.need_ident
    else:
        assert not verdict.addresses


@pytest.mark.parametrize("name,conf,mode,spec,want", CASES, ids=[c[0] for c in CASES])
def test_decision_table(configs, name, conf, mode, spec, want):
    check(D.decide(make_ask(spec), configs(conf, mode)), want)


REQUEST_CASES = [c for c in CASES if c[3][1] is not None]


def key_or_none(ip):
    try:
        return key(ip)
    except ValueError:
        return None


@pytest.mark.parametrize("name,conf,mode,spec,want", REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES])
def test_every_caller_gets_the_same_answer(configs, name, conf, mode, spec, want):
    """CONNECT and BIND ask the same question; a datagram and a re-check
    ask it without the identd matrix, and then agree with the request
    wherever the deciding line does not ask identd."""
    cfg = configs(conf, mode)
    connect = D.decide(make_ask(spec, command=D.CONNECT), cfg)
    bind = D.decide(make_ask(spec, command=D.BIND), cfg)
    if not any(netinfo.is_unspecified(k) for k in map(key_or_none, spec[1]) if k):
        # (BIND's DSTIP 0.0.0.0 names no peer: bind.py judges the peer)
        assert (bind.allowed, bind.rule, bind.why, list(bind.addresses), bind.need_ident) == \
            (connect.allowed, connect.rule, connect.why, list(connect.addresses), connect.need_ident)
    quiet = D.decide(make_ask(spec, command=D.UDP, ident_checks=False), cfg)
    default = spec[2].get("ident_default") if len(spec) > 2 else None
    mode = D.ident_mode(connect.rule, default) if connect.rule is not None else "n"
    if not connect.need_ident and mode == "n":
        assert (quiet.allowed, quiet.rule, quiet.why) == (connect.allowed, connect.rule, connect.why)


def test_reason_texts():
    rule = R.Rule(R.DENY, R.AddrSpec.any(), file="s.conf", line=7)
    assert D.Verdict(False, rule).reason("s.conf") == " by s.conf:7"
    assert D.Verdict(False, None).reason("s.conf") == ": no matching rule in s.conf"
    assert D.Verdict(False, rule, "why not").reason("s.conf") == ": why not"
    assert D.Verdict(False, None, "why not").reason("s.conf") == ": why not"
    assert D.Verdict(False, rule, "why not", by_rule=True).reason("s.conf") == " by s.conf:7: why not"
    assert repr(D.Verdict(False, rule, "why not")) == "<Verdict refused s.conf:7: why not>"
    assert repr(D.Verdict(True)) == "<Verdict allowed ->"


def test_verdict_defaults_are_the_plain_refusal():
    v = D.Verdict(False)
    assert (v.code4, v.code5, v.need_ident, v.alert, v.user, v.run_rule_command) == \
        (P.S4_REJECTED, P.REP_NOT_ALLOWED, False, None, None, False)


def test_private_guard_modes():
    assert D.private_guard("yes", key("127.0.0.1")) and D.private_guard("yes", key(OUTSIDE))
    assert not D.private_guard("no", key(OUTSIDE))
    assert D.private_guard("auto", key(OUTSIDE)) and D.private_guard("auto", key("2001:db8::1"))
    assert not D.private_guard("auto", key("127.0.0.1")) and not D.private_guard("auto", key("::1"))
    assert not D.private_guard("auto", key("::ffff:127.0.0.5"))


def test_ident_mode_order():
    line = R.Rule(R.PERMIT, R.AddrSpec.any())
    assert D.ident_mode(line, None) == "n"
    assert D.ident_mode(line, "I") == "I"
    line.ident = "i"
    assert D.ident_mode(line, "I") == "i"


def test_names_are_looked_at_only_by_rules_that_name_hosts(configs):
    """A destination host name reaches the rules only when a line names
    hosts; the client's names only when a line names client hosts."""
    cfg = configs("guard", "no")
    by_name = D.decide(make_ask((OUTSIDE, ["127.0.0.1"], dict(dst_names=("localhost",)))), cfg)
    assert by_name.allowed and by_name.rule.line == 2
    src_named = parse_conf("permit client.example 0/0\n")
    assert D.decide(make_ask((OUTSIDE, ["203.0.113.1"], dict(src_names=("client.example",)))), src_named).allowed
    assert not D.decide(make_ask((OUTSIDE, ["203.0.113.1"])), src_named).allowed
    plain = configs("candidates")
    assert D.decide(make_ask((OUTSIDE, ["203.0.113.1"], dict(src_names=("x",), dst_names=("y",)))),
                    plain).rule.line == 2


# --- properties, for any small rule file ------------------------------------------------------

LINES = ["permit 0/0", "deny 0/0", "permit 10.0.0.0/8", "deny 10.1.0.0/16", "permit 0/0 127.0.0.0/8",
         "permit 0/0 192.0.2.0/24 eq 80", "deny 0/0 192.0.2.0/24 lt 1024", "permit *=alice 0/0",
         "permit ?=n *=bob 10.0.0.0/8", "permit 0/0 ::1/128", "deny ::/0 ::/0",
         "permit 0.0.0.0 0.0.0.0 0.0.0.0 0.0.0.0 ge 1000", "deny 127.0.0.0/8 169.254.0.0/16"]
ADDRS = ["10.1.2.3", "10.2.0.1", "127.0.0.1", "127.0.0.2", "169.254.1.1", OWN, "192.0.2.80", "203.0.113.5",
         "::1", "fe80::1", "2001:db8::1", "0.0.0.0", "::ffff:10.1.2.3", OUTSIDE]

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
rule_files = st.lists(st.sampled_from(LINES), min_size=0, max_size=6).map(tuple)
modes = st.sampled_from(["yes", "no", "auto"])
users = st.sampled_from([None, "alice", "bob"])
ports = st.sampled_from([22, 80, 999, 1000, 8080])


@functools.lru_cache(maxsize=None)
def config_of(lines, mode):
    return parse_conf("\n".join(lines + ("deny-private-destinations %s" % mode,)) + "\n", own={key(OWN)})


def single(cfg, src, dst, port, user):
    return D.decide(D.Ask(key(src), [dst], port, user=user), cfg)


@FAST
@given(rule_files, modes, st.sampled_from(ADDRS), st.lists(st.sampled_from(ADDRS), max_size=5), ports, users)
def test_property_verdict_is_the_per_address_answers_put_together(lines, mode, src, dsts, port, user):
    """With several candidates, the permitted ones are exactly those each
    permitted alone, in the caller's order; the deciding line is the first
    permitted one's; a refusal is the first candidate's refusal."""
    cfg = config_of(lines, mode)
    v = D.decide(D.Ask(key(src), list(dsts), port, user=user), cfg)
    alone = [single(cfg, src, d, port, user) for d in dsts]
    assert list(v.addresses) == [d for d, a in zip(dsts, alone) if a.allowed]
    assert v.allowed == bool(v.addresses)
    assert not v.need_ident                        # no line here asks identd
    if v.allowed:
        first = alone[list(dsts).index(v.addresses[0])]
        assert v.rule is first.rule and v.rule.action == R.PERMIT
    elif dsts:
        first = alone[0]
        assert (v.rule, v.why) == (first.rule, first.why)
    assert v.reason(cfg.path).startswith((" by ", ": "))


@FAST
@given(rule_files, st.sampled_from(ADDRS), st.sampled_from(ADDRS), ports, users)
def test_property_without_the_guard_the_rules_engine_decides(lines, src, dst, port, user):
    cfg = config_of(lines, "no")
    v = single(cfg, src, dst, port, user)
    if netinfo.is_unspecified(key(dst)):
        assert not v.allowed and v.rule is None and v.why == UNSPECIFIED % dst
        return
    rule = cfg.ruleset.match(R.Request(key(src), key(dst), port, user))
    assert v.rule is rule
    assert v.allowed == (rule is not None and rule.action == R.PERMIT)
    assert v.why is None


@FAST
@given(rule_files, st.sampled_from(["yes", "auto"]), st.sampled_from(ADDRS), st.sampled_from(ADDRS), ports, users)
def test_property_the_guard_only_takes_away_private_destinations(lines, mode, src, dst, port, user):
    open_ = single(config_of(lines, "no"), src, dst, port, user)
    guarded = single(config_of(lines, mode), src, dst, port, user)
    assert (open_.rule and open_.rule.line) == (guarded.rule and guarded.rule.line)
    if guarded.allowed:
        assert open_.allowed
    elif open_.allowed:
        assert netinfo.is_private(key(dst), {key(OWN)})
        assert not D.names_literally(guarded.rule.dst) and guarded.why == PRIVATE % dst
        assert mode == "yes" or not netinfo.is_loopback(key(src))


# --- issue 14: a name left for an upstream to resolve --------------------------------------

def test_a_name_that_does_not_resolve_here_is_judged_by_its_name_alone():
    cfg = parse_conf("deny 0/0 .bad.test\npermit 127.0.0.0/8 10.0.0.0/8\npermit 127.0.0.0/8 0/0 eq 80\n")
    src = R.ip_key("127.0.0.1")
    ask = lambda host, port: D.decide(D.Ask(src, [], port, dst_host=host), cfg)
    v = ask("www.only-upstream.test", 80)
    assert v.allowed and v.rule.line == 3 and not v.addresses      # no address line matched it
    assert not ask("www.only-upstream.test", 443).allowed
    assert ask("x.bad.test", 80).rule.line == 1
