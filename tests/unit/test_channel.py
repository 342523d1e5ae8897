"""channel.py: the memory file that hands a reloaded configuration to the
processes forked before it, and the reader's rules for using it."""

import os

import pytest

from sockd import channel as CH
from sockd import config as C

CONF = "listen 127.0.0.1:0\nreload recheck yes\npermit 127.0.0.0 255.0.0.0\ndeny 0/0\n"


@pytest.fixture
def channel():
    ch = CH.Channel()
    yield ch
    ch.close()


def test_nothing_published_is_nothing_fetched(channel):
    assert channel.fetch() is None
    assert CH.fetch_recheck(channel, 0, "worker 1") is None
    assert CH.fetch_recheck(None, 0, "worker 1") is None


def test_a_published_configuration_comes_back_whole(channel):
    cfg = C.parse_text(CONF, "/etc/sockd.conf")
    channel.publish(3, cfg, True)
    generation, recheck_on, got = channel.fetch()
    assert (generation, recheck_on) == (3, True)
    assert got.path == "/etc/sockd.conf" and got.reload_recheck
    assert [r.line for r in got.ruleset.rules] == [3, 4]


def test_a_child_of_a_fork_reads_what_the_master_writes_later(channel):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                    # the child waits for the word, then reads
        try:
            os.read(r, 1)
            got = channel.fetch()
            os._exit(0 if got and got[0] == 7 else 1)
        finally:
            os._exit(2)
    os.close(r)
    channel.publish(7, C.parse_text(CONF), True)
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_torn_write_is_ignored(channel):
    channel.publish(2, C.parse_text(CONF), True)
    size = os.fstat(channel.fd).st_size
    os.ftruncate(channel.fd, size - 10)          # as if the master were still writing
    assert channel.fetch() is None


def test_what_the_master_could_not_encode_is_reported_by_the_reader(channel, monkeypatch):
    def refuse(cfg):
        raise TypeError("not encodable")
    monkeypatch.setattr(CH.cache, "encode", refuse)
    channel.publish(2, C.parse_text(CONF), True)
    with pytest.raises(ValueError, match="TypeError: not encodable"):
        channel.fetch()
    logged = []
    monkeypatch.setattr(CH.log, "error", logged.append)
    assert CH.fetch_recheck(channel, 1, "worker 4") is None
    assert logged == ["worker 4: cannot re-check live connections: TypeError: not encodable"]


def test_fetch_recheck_only_for_a_newer_generation_that_asks_for_it(channel):
    cfg = C.parse_text(CONF)
    channel.publish(2, cfg, True)
    assert CH.fetch_recheck(channel, 2, "child 9") is None        # seen already
    generation, got = CH.fetch_recheck(channel, 1, "child 9")
    assert generation == 2 and got.reload_recheck
    channel.publish(3, cfg, False)                                 # a reload without recheck
    assert CH.fetch_recheck(channel, 2, "child 9") is None


def test_rule_lines_travel_as_text_and_come_back_the_same(channel, tmp_path):
    """The rules are parsed again by the readers (issue 17): every field
    of every line, its file and line, and the ruleset's hooks and userfiles
    come back as they were."""
    text = ("listen 127.0.0.1:0\nreload recheck yes\n"
            "#NO_IDENTD: echo no identd %A\n"
            "deny ?=I *=bob,/etc/users 10.0.0.0 255.0.0.0 192.0.2.0/24 eq 25 : echo %u\n"
            "permit method=gssapi,username tag=web *=alice 0/0 ALL ge 1024\n"
            "permit ?=i .example.org 2001:db8::/32 neq 80\n"
            "deny host.example 0.0.0.0 0.0.0.0\n"
            "permit 127.0.0.0 255.0.0.0\n"
            "limit bandwidth rule web 1M\n")
    cfg = C.parse_text(text, "/etc/sockd.conf")
    cfg.ruleset.userfiles["/etc/users"] = frozenset({"carol"})
    channel.publish(2, cfg, True)
    got = channel.fetch()[2]
    fields = ("action", "ident", "users", "methods", "port_op", "port", "command", "file", "line", "text", "tag")

    def spec(a):
        return (a.kind, a.family, a.addr, a.mask, a.name, a.text)
    assert len(got.ruleset.rules) == len(cfg.ruleset.rules) == 5
    for a, b in zip(cfg.ruleset.rules, got.ruleset.rules):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert spec(a.src) == spec(b.src) and spec(a.dst) == spec(b.dst)
    assert got.ruleset.no_identd == cfg.ruleset.no_identd and got.ruleset.userfiles == {"/etc/users": {"carol"}}
    assert got.ruleset.needs_src_names and got.ruleset.has_users and got.limit_bandwidth[0].target == "web"


def test_a_way_out_file_of_url_upstreams_travels_too(channel, tmp_path):
    """The upstreams of ``upstream FILE`` come back whole: a recheck's copy
    of the configuration once failed on them ("Server.__new__() missing 2
    required positional arguments"), so old workers could not re-check
    their sessions after a reload of a configuration with URL upstreams."""
    from sockd import configload
    up = tmp_path / "wayout"
    up.write_text("direct 10.0.0.0/8\nsockd @=socks5://u:p%40w@[2001:db8::1]:1081?pipeline,up2:1082,"
                  "http://px:3128 ALL\n")
    os.chmod(up, 0o600)
    conf = tmp_path / "sockd.conf"
    conf.write_text(CONF + "upstream %s\n" % up)
    cfg = configload.load(str(conf))
    channel.publish(4, cfg, True)
    got = channel.fetch()[2]
    a, b = cfg.wayout.entries[1].servers, got.wayout.entries[1].servers
    assert a == b and [type(s) for s in b] == [type(s) for s in a]
    for x, y in zip(a, b):
        assert (x.host, x.port, x.kind, x.user, x.password, x.pipeline, x.label, x.family) == \
               (y.host, y.port, y.kind, y.user, y.password, y.pipeline, y.label, y.family)
    assert b[0].label == "socks5://[2001:db8::1]:1081?pipeline" and b[0].password == "p@w"
