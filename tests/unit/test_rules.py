"""sockd.rules: the first-match engine on the golden example of the classic
package and more; address specifications, ip_key and the index checked
against ipaddress and a full scan with hypothesis."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd import config as C
from sockd import configload
from sockd import rules as R

GOLDEN = """\
deny *=bonnie,clyde 128.12.6.0 255.255.255.0 : mail 'Rejected SOCKS access by %u'
permit *=ylee 128.12.6.4 255.255.255.255 137.12.0.0 255.255.0.0
deny 128.12.0.0 255.255.0.0 eq telnet
permit 128.12.0.0 255.255.0.0
#NO_IDENTD: mail -s 'please run identd on %A' root
#BAD_ID: mail -s '%U pretends to be %u on %A' root
"""


def decide(text, user, src, dst, port, **kw):
    cfg = C.parse_text(text, "golden.conf")
    configload.read_userfiles(cfg)          # the parse is pure: the edge reads the *= files
    rule = cfg.ruleset.match(R.Request(R.ip_key(src), R.ip_key(dst), port, user, **kw))
    return rule.line if rule else None, rule.action if rule else "deny"


def test_golden_example():
    assert decide(GOLDEN, "clyde", "128.12.6.34", "10.0.0.1", 21) == (1, "deny")
    assert decide(GOLDEN, "ylee", "128.12.6.4", "137.12.3.4", 23) == (2, "permit")
    assert decide(GOLDEN, "jane", "128.12.2.13", "10.0.0.1", 23) == (3, "deny")
    assert decide(GOLDEN, "sam", "128.12.2.13", "10.0.0.1", 70) == (4, "permit")
    assert decide(GOLDEN, "don", "23.2.6.127", "10.0.0.1", 70) == (None, "deny")


def test_golden_special_lines_and_command():
    cfg = C.parse_text(GOLDEN, "golden.conf")
    rs = cfg.ruleset
    assert rs.no_identd == ("golden.conf", 5, "mail -s 'please run identd on %A' root")
    assert rs.bad_id[1] == 6
    assert rs.rules[0].command == "mail 'Rejected SOCKS access by %u'"
    assert rs.rules[0].users == ("bonnie", "clyde")


def test_first_match_wins_and_default_deny():
    text = "deny 10.0.0.0 255.0.0.0 10.9.0.0 255.255.0.0\npermit 10.0.0.0/8\n"
    assert decide(text, None, "10.1.1.1", "10.9.1.1", 80) == (1, "deny")
    assert decide(text, None, "10.1.1.1", "10.8.1.1", 80) == (2, "permit")
    assert decide(text, None, "11.1.1.1", "10.8.1.1", 80) == (None, "deny")


def test_port_operators():
    for op, port, yes in [("eq", 80, [80]), ("neq", 80, [79, 81]), ("lt", 1024, [1023]),
                          ("gt", 1023, [1024]), ("le", 1024, [1024, 1]), ("ge", 1024, [1024, 65535])]:
        text = "permit 0.0.0.0 0.0.0.0 %s %d\n" % (op, port)
        for p in yes:
            assert decide(text, None, "1.2.3.4", "5.6.7.8", p)[1] == "permit", (op, p)
    assert decide("permit 0/0 lt 1024\n", None, "1.2.3.4", "5.6.7.8", 1024)[1] == "deny"


def test_ipv6_rules_and_mapped_addresses():
    text = "permit 2001:db8::/32 ::/0\npermit ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\n" \
           "permit 192.0.2.0/24\n"
    assert decide(text, None, "2001:db8::5", "2001:db8::9", 80)[0] == 1
    assert decide(text, None, "::1", "127.0.0.1", 80)[0] == 2
    assert decide(text, None, "::ffff:192.0.2.7", "10.0.0.1", 80)[0] == 3
    assert decide(text, None, "2001:db9::5", "10.0.0.1", 80)[0] is None


def test_zero_mask_means_any_family():
    assert decide("permit 0.0.0.0 0.0.0.0\n", None, "::1", "::2", 1)[0] == 1
    assert decide("permit 10.0.0.0/8\n", None, "10.0.0.1", "2001:db8::1", 1)[0] == 1


def test_users_lists_and_files(tmp_path):
    uf = tmp_path / "staff"
    uf.write_text("alice, bob # the admins\ncarol\tdave\n")
    text = "permit *=root,%s 0/0\n" % uf
    assert decide(text, "root", "1.1.1.1", "2.2.2.2", 1)[0] == 1
    for u in ("alice", "bob", "carol", "dave"):
        assert decide(text, u, "1.1.1.1", "2.2.2.2", 1)[0] == 1
    assert decide(text, "Alice", "1.1.1.1", "2.2.2.2", 1)[0] is None
    assert decide(text, None, "1.1.1.1", "2.2.2.2", 1)[0] is None
    # the empty list means every user
    assert decide("permit *= 0/0\n", None, "1.1.1.1", "2.2.2.2", 1)[0] == 1


def test_names_zones_and_all():
    text = "deny ALL .evil.example\npermit ALL gw.example.org\npermit ALL 0.0.0.0 10.0.0.0 255.0.0.0\n"
    assert decide(text, None, "1.1.1.1", "9.9.9.9", 80, dst_names=("www.evil.example",))[0] == 1
    assert decide(text, None, "1.1.1.1", "9.9.9.9", 80, dst_names=("evil.example",))[0] == 1
    assert decide(text, None, "1.1.1.1", "9.9.9.9", 80, dst_names=("notevil.example",))[0] is None
    assert decide(text, None, "1.1.1.1", "9.9.9.9", 80, dst_names=("gw.example.org",))[0] == 2
    assert decide(text, None, "1.1.1.1", "10.2.3.4", 80)[0] == 3
    rs = C.parse_text(text).ruleset
    assert rs.needs_dst_names and not rs.needs_src_names


def test_memo_does_not_change_answers():
    text = "".join("deny 10.%d.0.0 255.255.0.0\n" % i for i in range(200)) + "permit 0/0 eq 80\n"
    rs = C.parse_text(text).ruleset
    for _ in range(3):
        for port, expected in ((80, 201), (81, None)):
            r = rs.match(R.Request(R.ip_key("192.0.2.1"), R.ip_key("192.0.2.2"), port, None))
            assert (r.line if r else None) == expected


def test_trace_lists_examined_rules():
    rs = C.parse_text(GOLDEN).ruleset
    trace = []
    rs.match(R.Request(R.ip_key("128.12.2.13"), R.ip_key("10.0.0.1"), 70, "sam"), trace)
    assert [r.line for r in trace] == [1, 2, 3, 4]


def test_source_index_gives_the_same_answers_as_a_full_scan():
    """Long rule files are matched through an index on the source address;
    it must never change which line decides."""
    import random
    rng = random.Random(1)
    for _ in range(200):
        lines = []
        for _ in range(rng.randrange(16, 60)):
            kind = rng.randrange(6)
            a = "10.%d.%d.%d" % (rng.randrange(3), rng.randrange(3), rng.randrange(3))
            m = rng.choice(["255.255.255.255", "255.255.255.0", "255.255.0.0", "255.0.0.0", "0.0.0.0"])
            src = ("%s %s" % (a, m) if kind < 3 else "ALL" if kind == 3 else "10.0.0.0/8" if kind == 4
                   else "::1/128")
            dst = "" if rng.random() < 0.5 else rng.choice(["10.%d.0.0 255.255.0.0" % rng.randrange(3),
                                                             "10.1.1.1/32", "ALL", ".zone.example"])
            port = "" if rng.random() < 0.5 else "%s %d" % (rng.choice(["eq", "eq", "neq", "lt", "ge"]),
                                                            rng.randrange(1, 4))
            lines.append("%s %s %s %s" % (rng.choice(["permit", "deny"]), src, dst, port))
        rs = C.parse_text("\n".join(lines) + "\n").ruleset
        assert rs._indexed                                 # the index is in use
        for _ in range(30):
            src = rng.choice(["10.%d.%d.%d" % (rng.randrange(3), rng.randrange(3), rng.randrange(3)), "::1"])
            req = R.Request(R.ip_key(src), R.ip_key("10.%d.1.1" % rng.randrange(3)), rng.randrange(1, 4), None)
            trace = []
            assert rs.match(req, trace) is rs._scan(req, None)


# --- the engine stops for a user it does not know yet (moved here from test_identity_units.py) ---

def test_need_user_for_lines_that_ask_identd():
    rs = C.parse_text("permit ?=n *=alice 0/0\npermit ?=I *=bob 0/0\npermit 0/0\n").ruleset
    req = R.Request(R.ip_key("1.1.1.1"), R.ip_key("2.2.2.2"), 80, None)
    asked = []

    def user_of(rule):
        if rule.ident == "I":
            asked.append(rule.line)
            return R.NEED_USER(rule)
        return None
    got = rs.match(req, user_of=user_of)
    assert isinstance(got, R.NEED_USER) and got.rule.line == 2 and asked == [2]
    assert rs.match(req, user_of=lambda r: "bob" if r.ident == "I" else None).line == 2
    assert rs.match(req, user_of=lambda r: None).line == 3


def test_may_permit_looks_at_permit_lines_for_the_client_only():
    rs = C.parse_text("deny 10.0.0.0/8\npermit client.example 0/0\npermit *=alice 10.0.0.0/8\n"
                      "permit 10.1.0.0/16 192.0.2.0/24\n").ruleset
    assert rs.may_permit(R.ip_key("10.1.2.3"), None).line == 4          # deny lines and destinations aside
    assert rs.may_permit(R.ip_key("10.2.2.3"), "alice").line == 3
    assert rs.may_permit(R.ip_key("10.2.2.3"), None) is None           # a named client host is not judged here
    assert rs.has_users and rs.needs_src_names and not rs.needs_dst_names and rs.has_permit


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(R.Ruleset, "MEMO_SIZE", 16)
    rs = C.parse_text("permit 10.0.0.0/8\n").ruleset
    for port in range(100):
        assert rs.match(R.Request(R.ip_key("10.1.1.1"), R.ip_key("192.0.2.1"), port, None)).line == 1
        assert len(rs._memo) <= 16


@pytest.mark.parametrize("text,error", [
    ("10.0.0.0", "address without a mask"), ("10.0.0.0/33", "bad CIDR address"),
    ("10.0.0.0 ffff::", "mask and address are of different families"), ("bad_host!", "not an address"),
    ("10.0.0.0/8 255.0.0.0", "a CIDR address takes no separate mask"), ("1.2.3", "not an address"),
])
def test_bad_address_specifications(text, error):
    with pytest.raises(ValueError, match=error):
        R.parse_addr_spec(*text.split())


@given(st.ip_addresses())
def test_ip_key_folds_mapped_addresses_and_refuses_other_text(ip):
    fam, n = R.ip_key(str(ip))
    if ip.version == 6 and ip.ipv4_mapped is not None:
        assert (fam, n) == (4, int(ip.ipv4_mapped))
    else:
        assert (fam, n) == (ip.version, int(ip))
    assert R.ip_key(str(ip) + "%eth0" if ip.version == 6 else str(ip)) == (fam, n)


@pytest.mark.parametrize("junk", ["", "host.example", "1.2.3", "::g", "10.0.0.0/8", "1.2.3.4 "])
def test_ip_key_of_what_is_no_address(junk):
    with pytest.raises(ValueError):
        R.ip_key(junk)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([4, 6]).flatmap(lambda v: st.tuples(st.ip_addresses(v=v), st.integers(0, 32 if v == 4 else 128)))
       .map(lambda t: ipaddress.ip_network(t, strict=False)), st.ip_addresses())
def test_a_network_matches_what_ipaddress_says_it_contains(net, ip):
    spec = R.parse_addr_spec(net.with_prefixlen)
    fam, n = R.ip_key(str(ip))
    inside = ip in net if ip.version == net.version else False
    if ip.version == 6 and ip.ipv4_mapped is not None and net.version == 4:
        inside = ip.ipv4_mapped in net
    elif ip.version == 6 and ip.ipv4_mapped is not None:
        inside = False                              # folded to IPv4: only IPv4 networks see it
    if net.prefixlen == 0:
        inside = True                               # a zero mask is any address of either family
    assert spec.match(fam, n) == inside


@pytest.mark.parametrize("text,want", [
    ("::ffff:127.0.0.1", (4, 0x7F000001)),          # mapped
    ("::127.0.0.1", (4, 0x7F000001)),               # compatible
    ("::ffff:0:127.0.0.1", (4, 0x7F000001)),        # translated
    ("::ffff:0:a9fe:a9fe", (4, 0xA9FEA9FE)),        # the same, written in hex: 169.254.169.254
    ("::", (6, 0)),                                 # the unspecified address stays IPv6 ...
    ("::1", (6, 1)),                                # ... and so does loopback
    ("::2", (4, 2)),                                # a compatible 0.0.0.2 (0.0.0.0/8: never a destination)
    ("2001:db8::127.0.0.1", (6, 0x20010DB8 << 96 | 0x7F000001)),
])
def test_ip_key_sees_every_ipv6_spelling_of_an_ipv4_address(text, want):
    assert R.ip_key(text) == want


# --- issue 13: GSS-API principals and method= ---------------------------------------------

def test_a_gssapi_principal_matches_with_and_without_its_realm(tmp_path):
    uf = tmp_path / "krb"
    uf.write_text("carol\n")
    text = "permit *=alice,bob@OTHER.TEST,%s 0/0\n" % uf
    ok = lambda user, method="gssapi": decide(text, user, "1.1.1.1", "2.2.2.2", 1, method=method)[0] == 1
    assert ok("alice@SOCKS.TEST") and ok("alice")
    assert ok("bob@OTHER.TEST") and not ok("bob@SOCKS.TEST")
    assert ok("carol@SOCKS.TEST")                       # userfiles too
    assert not ok("mallory@SOCKS.TEST")
    # the realm is dropped only for principals: an RFC 1929 or SOCKS 4 name is taken whole
    assert not ok("alice@SOCKS.TEST", "username") and not ok("alice@SOCKS.TEST", None)


def test_method_lines_apply_to_that_method_only():
    text = "permit method=gssapi *=alice 0/0\npermit method=username,none 10.0.0.0/8\n"
    assert decide(text, "alice@R", "1.1.1.1", "2.2.2.2", 1, method="gssapi")[0] == 1
    assert decide(text, "alice", "1.1.1.1", "2.2.2.2", 1, method="username")[0] is None
    assert decide(text, "alice", "10.1.1.1", "2.2.2.2", 1, method="username")[0] == 2
    assert decide(text, None, "10.1.1.1", "2.2.2.2", 1, method="none")[0] == 2
    assert decide(text, "alice", "10.1.1.1", "2.2.2.2", 1, method=None)[0] is None     # SOCKS 4


def test_the_memo_keeps_methods_apart():
    cfg = C.parse_text("permit method=gssapi *=alice 0/0\n", "m.conf")
    rs = cfg.ruleset
    req = lambda method: R.Request(R.ip_key("1.1.1.1"), R.ip_key("2.2.2.2"), 1, "alice@R", method=method)
    assert rs.match(req("gssapi")) is not None
    assert rs.match(req("username")) is None
    assert rs.match(req("gssapi")) is not None


def test_may_permit_looks_at_the_method():
    rs = C.parse_text("permit method=gssapi 0/0\n", "m.conf").ruleset
    assert rs.may_permit(R.ip_key("1.1.1.1"), None, "gssapi") is not None
    assert rs.may_permit(R.ip_key("1.1.1.1"), None, "none") is None


@pytest.mark.parametrize("line, near", [("permit method=kerberos 0/0", "method=kerberos"),
                                        ("permit method=gssapi method=none 0/0", "method=none"),
                                        ("permit method= 0/0", "method=")])
def test_bad_method_fields_name_their_token(line, near):
    with pytest.raises(C.ConfigError) as e:
        C.parse_text(line + "\n", "m.conf")
    assert "m.conf:1:" in e.value.lines()[0] and "near '%s'" % near in e.value.lines()[0]


# --- issue 17 (scale): the index of long rule files, the fast address parser ---------------

V4_NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "10.1.1.1/32", "10.2.0.0 255.255.0.0",
           "10.0.1.0 255.0.255.0", "0.0.0.0 0.0.0.0", "0/0", "192.0.2.0/24"]
V6_NETS = ["::1/128", "2001:db8::/32", "2001:db8:1::/48", "::/0"]
NAMES = ["ALL", "host.example", ".example", "other.test"]
FIELD = st.sampled_from(V4_NETS + V6_NETS + NAMES)
ADDRS = st.sampled_from(["10.1.1.1", "10.1.2.3", "10.2.3.4", "10.0.1.9", "192.0.2.7", "198.51.100.1", "::1",
                         "2001:db8:1::5", "2001:db8:2::5", "fe80::1"])
LINE = st.tuples(st.sampled_from(["permit", "deny"]),
                 st.sampled_from(["", "?=I ", "?=i ", "?=n "]),
                 st.sampled_from(["", "", "*=alice ", "*=bob,alice "]),
                 st.sampled_from(["", "", "method=gssapi ", "method=none,username "]),
                 FIELD, st.one_of(st.just(""), FIELD),
                 st.sampled_from(["", "", "eq 1", "eq 2", "eq 3", "neq 2", "lt 2", "gt 1", "le 2", "ge 3"]))


def line_text(t):
    action, ident, users, method, src, dst, port = t
    return "%s %s%s%s%s %s %s" % (action, ident, users, method, src, dst, port)


REQUEST = st.tuples(ADDRS, st.one_of(ADDRS, st.none()), st.integers(1, 3),
                    st.sampled_from([None, "alice", "bob", "carol"]),
                    st.sampled_from([None, "none", "username", "gssapi"]),
                    st.sampled_from([(), ("host.example",), ("a.example",), ("other.test",)]),
                    st.sampled_from([(), ("host.example",), ("b.example",)]), st.booleans())


def same(a, b):
    if isinstance(a, R.NEED_USER) or isinstance(b, R.NEED_USER):
        return isinstance(a, R.NEED_USER) and isinstance(b, R.NEED_USER) and a.rule is b.rule
    return a is b


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, min_size=R.Ruleset.INDEX_FROM, max_size=70), st.lists(REQUEST, min_size=1, max_size=25))
def test_the_index_gives_the_linear_scans_answer(lines, requests):
    """First match wins, through the index exactly as line by line: for
    every request, with and without identd's user (NEED_USER stops at the
    same line), and for may_permit."""
    rs = C.parse_text("\n".join(line_text(t) for t in lines) + "\n").ruleset
    assert rs._indexed
    for src, dst, port, user, method, src_names, dst_names, ident in requests:
        req = R.Request(R.ip_key(src), R.ip_key(dst) if dst else None, port, user, src_names, dst_names, method)

        def user_of(rule, user=user):
            return R.NEED_USER(rule) if rule.ident == "I" else user
        for uo in (None, user_of if ident else (lambda rule: None)):
            want = rs._scan(req, [], uo)                   # a trace: line by line
            assert same(rs._scan(req, None, uo), want)
            assert same(rs.match(req, user_of=uo), want)
        want = next((e[0] for e in rs._compiled if rs._permit_test(e, R.ip_key(src), user, method)), None)
        assert rs.may_permit(R.ip_key(src), user, method) is want


@settings(max_examples=100, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=40))
def test_the_rulesets_flags_say_what_its_lines_have(lines):
    """needs_src_names, needs_dst_names, has_users and has_methods, made in
    the index's one pass (short files too), are what the lines say; every
    field's index key is its own (family, mask, network), or None."""
    rs = C.parse_text("\n".join(line_text(t) for t in lines) + "\n").ruleset
    assert rs.needs_src_names == any(r.src.uses_names for r in rs.rules)
    assert rs.needs_dst_names == any(r.dst.uses_names for r in rs.rules)
    assert rs.has_users == any(r.users is not None for r in rs.rules)
    assert rs.has_methods == any(r.methods is not None for r in rs.rules)
    for r in rs.rules:
        for f in (r.src, r.dst):
            assert f.key == ((f.family, f.mask, f.addr) if f.kind == "net" and f.mask else None)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789.", max_size=18), st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=30),
                 st.ip_addresses().map(str), st.text(max_size=8)))
def test_ip_literal_reads_what_ipaddress_reads(text):
    try:
        ip = ipaddress.ip_address(text)
        want = (ip.version, int(ip))
    except ValueError:
        want = None
    assert R.ip_literal(text) == want


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdef", max_size=20)),
       st.one_of(st.integers(0, 130).map(str), st.sampled_from(["", "08", "255.255.0.0", "0.0.255.255", "+8", "x"])))
def test_cidr_reads_what_ipaddress_reads(addr, prefix):
    tok = "%s/%s" % (addr, prefix)
    try:
        net = ipaddress.ip_network(tok, strict=False)
        want = (net.version, int(net.network_address), int(net.netmask))
    except ValueError:
        want = None
    try:
        got = R.cidr(tok)
    except ValueError:
        got = None
    assert got == want


def test_a_long_file_is_filed_in_linear_memory():
    """Every line sits in one list of the index (no per-key bitsets that
    grow with the file), and a request looks at the few lines it could match."""
    text = "".join("deny 10.%d.%d.0/24\n" % (i // 250, i % 250) for i in range(20000)) + "permit 0/0 eq 80\n"
    rs = C.parse_text(text).ruleset
    assert rs._buckets is None                    # read, not indexed: the first match (or prepare) builds it
    rs.prepare()
    assert sum(len(v) for v in rs._buckets.values()) == 20001
    seen = []

    def test(entry, req, user_of=None):
        seen.append(entry[0].line)
        return R.Ruleset._test(rs, entry, req, user_of)
    rs._test = test
    got = rs.match(R.Request(R.ip_key("10.3.7.1"), R.ip_key("192.0.2.1"), 80, None))
    # the deny of 10.3.7.0/24 and the catch-all: two lines looked at, not 758
    assert got.line == 3 * 250 + 7 + 1 and sorted(seen) == [758, 20001]
    del seen[:]
    got = rs.match(R.Request(R.ip_key("10.200.7.1"), R.ip_key("192.0.2.1"), 80, None))
    assert got.line == 20001 and seen == [20001]
