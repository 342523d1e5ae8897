"""sockd/client/conf.py: socks.conf, fed as text (no sockets).

The classic grammar, the decisions (first match, the built-in direct
cases, the server lists), the server forms, SOCKS_SERVER / SOCKS_VERSION /
SOCKS_CONF read from a given environment, and the line-numbered errors:
example tables, and hypothesis for text, server names and environment
values that can be hostile (only ConfError / Bad may come out).  The only
files are the test's own (userfiles, an unreadable path)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import config as C
from sockd import rules as R
from sockd.errors import ConfigError
from sockd.client import conf as K

EXAMPLE = """\
# the classic layout: inside direct, a few refusals, the rest through the firewall
direct 127.0.0.0 255.0.0.0
deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %u' root
direct 10.0.0.0 255.0.0.0
deny 0.0.0.0 0.0.0.0 eq telnet
sockd @=fw1:1081,fw2 .example.com
sockd@[::1]:1082,10.9.9.9:socks 192.168.0.0/16 le 1023
domain example.com
nameserver 10.0.0.53
direct ::1/128
sockd ALL
"""


FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conf(text=EXAMPLE, path="socks.conf"):
    return K.parse_text(text, path, port=1080)


EXAMPLE_CONF = conf()


def decide(c, user, ip, port, names=(), defaults=(("fw", 1080),)):
    dst = R.ip_key(ip) if ip else (0, 0)
    return K.decide(c, user, dst, port, names, defaults)


def test_entries_are_read_in_order():
    c = conf()
    assert [(e.line, e.action) for e in c.entries] == [
        (2, "direct"), (3, "deny"), (4, "direct"), (5, "deny"), (6, "sockd"), (7, "sockd"),
        (10, "direct"), (11, "sockd")]
    e = c.entries[1]
    assert e.users == ("bonnie", "clyde") and e.command == "mail -s 'refused %u' root"
    assert c.entries[4].servers == (("fw1", 1081), ("fw2", 1080))
    assert c.entries[5].servers == (("::1", 1082), ("10.9.9.9", 1080))
    assert c.entries[5].port_op == "le" and c.entries[5].port == 1023
    assert c.entries[7].servers is None      # the default server


@pytest.mark.parametrize("user,ip,port,names,action,line", [
    ("clyde", "10.1.2.3", 80, (), "deny", 3),
    ("jane", "10.1.2.3", 80, (), "direct", 4),
    ("jane", "172.16.0.1", 23, (), "deny", 5),
    ("jane", "172.16.0.1", 80, ("www.example.com",), "sockd", 6),
    ("jane", "172.16.0.1", 80, ("example.com",), "sockd", 6),
    ("jane", "172.16.0.1", 80, ("example.org",), "sockd", 11),
    ("jane", "192.168.4.4", 1023, (), "sockd", 7),
    ("jane", "192.168.4.4", 1024, (), "sockd", 11),
    ("jane", None, 80, ("unknown.example.com",), "sockd", 6),   # a name only the server can resolve
])
def test_first_match_decides(user, ip, port, names, action, line):
    d = decide(conf(), user, ip, port, names)
    assert d.action == action and d.entry.line == line, d


def test_servers_come_from_the_line_else_the_default():
    c = conf()
    assert decide(c, "jane", "172.16.0.1", 80, ("www.example.com",)).servers == (("fw1", 1081), ("fw2", 1080))
    assert decide(c, "jane", "8.8.8.8", 80).servers == (("fw", 1080),)
    d = decide(c, "jane", "8.8.8.8", 80, defaults=())
    assert d.action == "deny" and "SOCKS_SERVER is not set" in d.reason and "socks.conf:11" in d.reason


def test_no_match_means_deny():
    c = conf("direct 10.0.0.0/8\n")
    d = decide(c, "jane", "8.8.8.8", 80)
    assert d.action == "deny" and d.entry is None and "no line matches" in d.reason


def test_no_file_means_direct_and_local_host_is_always_direct(tmp_path):
    assert K.load(str(tmp_path / "none")) is None
    assert decide(None, "jane", "8.8.8.8", 80).action == "direct"
    deny_all = conf("deny ALL\n")
    for ip in ("127.0.0.1", "0.0.0.0", "::1", "::"):
        assert decide(deny_all, "jane", ip, 80).action == "direct", ip
    assert decide(deny_all, "jane", "127.0.0.2", 80).action == "deny"


def test_userfiles_and_the_trace(tmp_path):
    uf = tmp_path / "users"
    uf.write_text("# the outside crowd\nann, bob\n  cy\n")
    c = conf("direct *=%s,dave 10.0.0.0/8\nsockd @=fw 0/0\n" % uf)
    assert decide(c, "bob", "10.0.0.1", 80).action == "direct"
    assert decide(c, "dave", "10.0.0.1", 80).action == "direct"
    assert decide(c, "eve", "10.0.0.1", 80).action == "sockd"
    trace = []
    K.decide(c, "eve", R.ip_key("10.0.0.1"), 80, (), (), trace)
    assert [e.line for e in trace] == [1, 2]
    missing = conf("direct *=/nonexistent/users 0/0\n")
    assert missing.warnings == [("socks.conf", 1, "Unable to open userfile (/nonexistent/users)")]
    assert decide(missing, "eve", "10.0.0.1", 80).action == "deny"


def test_keywords_are_case_insensitive_and_tabs_separate():
    c = conf("DIRECT\t10.0.0.0\t255.0.0.0\nSockd@fw:1081 ALL\n")
    assert [e.action for e in c.entries] == ["direct", "sockd"]
    assert c.entries[1].servers == (("fw", 1081),)


def test_hash_and_colon_scan():
    c = conf("direct 10.0.0.0/8 # a comment : not a command\n"
             "deny 10.0.0.0/8 : echo 'a # inside the command'\n"
             "sockd @=[2001:db8::1]:1081 2001:db8::/32 : logger via %z\n")
    assert c.entries[0].command is None
    assert c.entries[1].command == "echo 'a # inside the command'"
    assert c.entries[2].servers == (("2001:db8::1", 1081),)
    assert c.entries[2].command == "logger via %z"
    assert decide(c, "x", "2001:db8::5", 80).action == "sockd"


@pytest.mark.parametrize("tok,want", [
    ("fw", ("fw", 1080)),
    ("fw.example.com:1081", ("fw.example.com", 1081)),
    ("10.0.0.1:socks", ("10.0.0.1", 1080)),
    ("[::1]", ("::1", 1080)),
    ("[::1]:1082", ("::1", 1082)),
    ("2001:db8::1", ("2001:db8::1", 1080)),
])
def test_server_forms(tok, want):
    assert K.parse_server(tok, 1080) == want


def test_default_port_comes_from_services():
    # /etc/services names socks/tcp 1080 on Debian; either way it is 1080 here
    assert K.default_port() == 1080


def test_socks_server_environment():
    assert K.env_servers({}) == ()
    assert K.env_servers({"SOCKS_SERVER": "fw1,fw2:1081"}, 1080) == (("fw1", 1080), ("fw2", 1081))
    with pytest.raises(K.ConfError) as ei:
        K.env_servers({"SOCKS_SERVER": "fw1:99999"}, 1080)
    assert str(ei.value) == "SOCKS_SERVER: bad server port: port number out of range (near 'fw1:99999')"
    assert K.conf_path({}) == "/etc/socks.conf"
    assert K.conf_path({"SOCKS_CONF": "/x/socks.conf"}) == "/x/socks.conf"


BAD = """\
direct 10.0.0.1
sockd@ 0/0
permit 0/0
direct 0/0 about 80
deny ?=I 0/0
direct @=fw 0/0
sockd @=fw:99999 0/0
sockd 0/0 eq 70000
sockd @=fw @=fw2 0/0
deny *=a,,b 0/0
sockd @=[::1 0/0
direct
deny eq 80
sockd @=bad_host!name 0/0
direct 0/0 eq 80 extra
 : echo lonely
"""


def test_every_mistake_is_reported_with_file_line_and_token():
    with pytest.raises(K.ConfError) as ei:
        K.parse_text(BAD, "/etc/socks.conf", 1080)
    lines = ei.value.lines()
    assert lines == [
        "/etc/socks.conf:1: destination address needs a mask (or write it as ADDRESS/PREFIX) (near '10.0.0.1')",
        "/etc/socks.conf:2: sockd@ needs a server: sockd@HOST[:PORT],... (near 'sockd@')",
        "/etc/socks.conf:3: unknown action: expected deny, direct, sockd or sockd@SERVER (near 'permit')",
        "/etc/socks.conf:4: invalid comparison: expected eq, neq, lt, gt, le or ge (near 'about')",
        "/etc/socks.conf:5: ?= (identd) belongs in sockd.conf, not in socks.conf (near '?=I')",
        "/etc/socks.conf:6: a server list (@=) belongs on a sockd line, not on a direct line (near '@=fw')",
        "/etc/socks.conf:7: bad server port: port number out of range (near 'fw:99999')",
        "/etc/socks.conf:8: invalid port number: port number out of range (near '70000')",
        "/etc/socks.conf:9: @= given twice (near '@=fw2')",
        "/etc/socks.conf:10: empty name in *= list (near '*=a,,b')",
        "/etc/socks.conf:11: missing ']' in IPv6 server address (near '[::1')",
        "/etc/socks.conf:12: missing destination address (write ALL or 0/0 for any) (near 'direct')",
        "/etc/socks.conf:13: missing destination address (write ALL or 0/0 for any) (near 'eq')",
        "/etc/socks.conf:14: bad server host name (near 'bad_host!name')",
        "/etc/socks.conf:15: unexpected text at the end of the rule (near 'extra')",
        "/etc/socks.conf:16: shell command without an entry",
    ]
    assert str(ei.value) == "\n".join(lines)


def test_an_empty_file_is_an_error_and_long_lines_are_refused():
    with pytest.raises(K.ConfError) as ei:
        K.parse_text("# nothing\n\n", "s.conf")
    assert str(ei.value).startswith("s.conf: no entries")
    with pytest.raises(K.ConfError) as ei:
        K.parse_text("direct 0/0 " + "#" * 2000 + "\n", "s.conf")
    assert ei.value.lines() == ["s.conf:1: line longer than 1024 characters"]


def test_unreadable_file(tmp_path):
    d = tmp_path / "dir.conf"
    d.mkdir()
    with pytest.raises(K.ConfError) as ei:
        K.load(str(d))
    assert str(ei.value).startswith("%s: cannot read" % d)


def test_hostile_bytes_never_raise_anything_but_conferror():
    import random
    rnd = random.Random(5)
    alphabet = "direct sockd deny @=*=:#/.,0123456789abcdef[]ALL eq lt \t\x00\xff"
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 80)))
        try:
            K.parse_text(text, "f")
        except K.ConfError as exc:
            assert all(line.startswith("f:") for line in exc.lines())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["sockd", "direct", "deny", "sockd@127.0.0.1:1080,h", "@=a,b", "*=u", "0/0", "10.0.0.0", "255.0.0.0",
     "eq", "80", ":", "#", "ALL", ".z", "::1/128"]), max_size=8).map(" ".join)))
def test_any_text_parses_or_raises_config_error(text):
    try:
        K.parse_text(text, "socks.conf")
    except ConfigError as exc:
        assert exc.problems


# --- servers: the forms, hostile tokens, and fmt_server read back ------------------------------

@pytest.mark.parametrize("tok,message", [
    ("", "missing server host name"),
    (":1080", "missing server host name"),
    ("fw:", "bad server port: unknown service name"),
    ("fw:0", "bad server port: 0"),
    ("fw:65536", "bad server port: port number out of range"),
    ("fw:\u00b2", "bad server port: unknown service name"),       # a Unicode digit is not a number
    ("[::1", "missing ']' in IPv6 server address"),
    ("[]", "bad IPv6 server address"),
    ("[10.0.0.1]", "bad IPv6 server address"),
    ("[::1]1080", "expected ':PORT' after ']'"),
    ("[::1]:", "expected ':PORT' after ']'"),
    ("[::1]:0", "bad server port: 0"),
    ("2001:db8::zz", "bad server: write an IPv6 server as [ADDRESS]:PORT"),
    ("fw.example.com.99", "bad server host name"),                # a mistyped address, not a name
    ("bad host", "bad server host name"),
    ("a..b", "bad server host name"),
])
def test_bad_server_tokens(tok, message):
    with pytest.raises(C.Bad) as ei:
        K.parse_server(tok, 1080)
    assert str(ei.value) == message
    assert ei.value.token == tok


def test_server_lists():
    assert K.parse_servers("a,b:1,[::1]:2", 1080) == (("a", 1080), ("b", 1), ("::1", 2))
    for text, message in (("", "empty server list"), ("a,,b", "empty name in server list"),
                          ("a,", "empty name in server list")):
        with pytest.raises(C.Bad) as ei:
            K.parse_servers(text, 1080)
        assert str(ei.value) == message


@pytest.mark.parametrize("server,text", [
    (("fw", 1080), "fw:1080"), (("10.0.0.1", 1), "10.0.0.1:1"), (("::1", 1081), "[::1]:1081"),
])
def test_fmt_server(server, text):
    assert K.fmt_server(server) == text


LABEL = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,14}", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).filter(lambda ls: not ls[-1].isdigit()).map(".".join)
HOSTS = st.one_of(HOSTNAME, st.ip_addresses().map(str))


@FAST
@given(HOSTS, st.integers(1, 65535))
def test_fmt_server_reads_back(host, port):
    assert K.parse_server(K.fmt_server((host, port)), 9) == (host, port)
    assert K.parse_servers(",".join([K.fmt_server((host, port))] * 2), 9) == ((host, port),) * 2


@FAST
@given(st.text(max_size=60))
def test_any_server_token_parses_or_raises_bad(tok):
    try:
        host, port = K.parse_server(tok, 1080)
    except C.Bad as exc:
        assert exc.token == tok
    else:
        assert host and 0 < port < 65536


# --- the environment: SOCKS_SERVER, SOCKS_VERSION, SOCKS_CONF ------------------------------------

@pytest.mark.parametrize("value,want", [
    (None, None), ("", None), ("  ", None), ("4", 4), ("5", 5), (" 5 ", 5),
])
def test_socks_version(value, want):
    env = {} if value is None else {"SOCKS_VERSION": value}
    assert K.env_version(env) == want


@pytest.mark.parametrize("value", ["3", "4a", "45", "v5", "\u0665", "5\x00"])
def test_socks_version_mistakes_name_the_variable(value):
    with pytest.raises(K.ConfError) as ei:
        K.env_version({"SOCKS_VERSION": value})
    assert str(ei.value) == "SOCKS_VERSION: expected 4 or 5 (near '%s')" % C.printable(value.strip())


@FAST
@given(st.text(max_size=40))
def test_hostile_environment_values_raise_only_conferror(text):
    for read, var in ((K.env_servers, "SOCKS_SERVER"), (K.env_version, "SOCKS_VERSION")):
        try:
            read({var: text}, *((1080,) if read is K.env_servers else ()))
        except K.ConfError as exc:
            assert all(line.startswith(var + ": ") for line in exc.lines())


def test_empty_socks_server_and_conf_mean_the_defaults():
    assert K.env_servers({"SOCKS_SERVER": "  "}) == ()
    assert K.conf_path({"SOCKS_CONF": ""}) == K.DEFAULT_PATH


# --- lines: skipped words, colons of server lists, the user lists ------------------------------

def test_resolver_lines_are_skipped_and_a_server_list_keeps_its_colons():
    c = conf("findserver 10.0.0.1\nbind 1.2.3.4\nsockd@fw:1081,[::1]:1082 ALL : logger %u:%z\n")
    (e,) = c.entries
    assert e.servers == (("fw", 1081), ("::1", 1082)) and e.command == "logger %u:%z"
    assert K.split_entry_line("sockd @=a:1 ALL : x:y") == (["sockd", "@=a:1", "ALL"], "x:y")
    assert K.split_entry_line("direct ALL:echo") == (["direct", "ALL"], "echo")


def test_a_sockd_line_with_an_empty_at_list_uses_the_default_server():
    (e,) = conf("sockd @= ALL\n").entries
    assert e.servers is None
    assert decide(conf("sockd @= ALL\n"), "u", "8.8.8.8", 80).servers == (("fw", 1080),)


def test_sockd_at_and_an_at_list_on_one_line_is_a_mistake():
    with pytest.raises(K.ConfError) as ei:
        conf("sockd@fw @=fw2 ALL\n")
    assert ei.value.lines() == ["socks.conf:1: @= given twice (near '@=fw2')"]


def test_conferror_lines_without_a_line_number():
    e = K.ConfError([("SOCKS_SERVER", 0, "bad"), ("f", 3, "worse")])
    assert e.lines() == ["SOCKS_SERVER: bad", "f:3: worse"] and str(e) == "SOCKS_SERVER: bad\nf:3: worse"
    assert isinstance(e, ConfigError)


# --- decisions: the reasons in words, and the promise for any destination ---------------------

def test_decision_reasons_and_repr():
    c = conf()
    d = decide(c, "jane", "192.168.4.4", 1023)
    assert d.reason == "socks.conf:7: via sockd at [::1]:1082, 10.9.9.9:1080" and d.allowed
    assert repr(d) == "Decision(sockd, (('::1', 1082), ('10.9.9.9', 1080)), %s)" % d.reason
    d = decide(c, "clyde", "10.1.2.3", 80)
    assert d.reason == ("socks.conf:3: denied by 'deny *=bonnie,clyde 10.0.0.0 255.0.0.0'") and not d.allowed
    assert decide(c, "jane", "10.1.2.3", 80).reason == "socks.conf:4: direct"
    assert K.decide(None, "u", (4, 5), 80).reason == "no socks.conf (/etc/socks.conf): every connection is direct"
    assert K.decide(None, "u", (4, 5), 80, path="/x").reason == "no socks.conf (/x): every connection is direct"
    local = K.decide(conf("deny ALL\n"), "u", (6, 1), 80)
    assert local.action == "direct" and local.entry is None and "always direct" in local.reason


@FAST
@given(user=st.text(max_size=10), ip=st.ip_addresses(), port=st.integers(0, 65535),
       names=st.lists(HOSTNAME, max_size=2))
def test_every_destination_gets_exactly_one_decision(user, ip, port, names):
    d = K.decide(EXAMPLE_CONF, user, R.ip_key(str(ip)), port, tuple(names), (("fw", 1080),))
    assert d.action in K.ACTIONS
    assert (d.action == "sockd") == bool(d.servers)
    if d.entry is None:
        assert d.action == "direct" and R.ip_key(str(ip)) in K.ALWAYS_DIRECT or d.action == "deny"
    else:
        assert d.entry in EXAMPLE_CONF.entries and d.entry.action == d.action
