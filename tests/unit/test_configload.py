"""The edge of the configuration, with real temporary files: the file
itself, the files it names (userfiles, passwd, route), the system checks of
user, group and chroot, and the host's addresses -- every problem on the
line of the directive that named it."""

import gc
import os

import pytest

from sockd import cache
from sockd import configload as L
from sockd import passwd as PW
from sockd import rules as R
from sockd.errors import ConfigError

ETC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "etc", "sockd.conf")


def write(tmp_path, text, name="sockd.conf"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def problems(path):
    with pytest.raises(ConfigError) as e:
        L.load(path)
    return e.value.lines()


def test_shipped_default_loads():
    cfg = L.load(ETC)
    assert cfg.listen == [("127.0.0.1", 1080)]
    assert cfg.ruleset.has_permit
    assert not cfg.warnings


def test_unreadable_file():
    with pytest.raises(ConfigError) as e:
        L.load("/nonexistent/sockd.conf")
    assert e.value.lines() == ["/nonexistent/sockd.conf:0: cannot read: No such file or directory"]


def test_user_group_chroot_are_checked_on_their_lines(tmp_path):
    p = write(tmp_path, "user nobody\ngroup nogroup\nchroot /tmp/../tmp\npermit 0/0\n")
    cfg = L.load(p)
    assert (cfg.user, cfg.group, cfg.chroot) == ("nobody", "nogroup", "/tmp")    # normalised after the check
    p = write(tmp_path, "user no-such-user-xyz\ngroup no-such-group-xyz\nchroot relative\nchroot /no/such/dir\n"
                        "pidfile x.pid\nreload recheck maybe\ntimeout shutdown soon\n")
    assert [line.split(":", 1)[1] for line in problems(p)] == [
        "1: unknown user (near 'no-such-user-xyz')", "2: unknown group (near 'no-such-group-xyz')",
        "3: the chroot directory must be an absolute path (near 'relative')",
        "4: no such directory (near '/no/such/dir')",
        "5: the pid file must be an absolute path (near 'x.pid')",
        "6: expected yes or no (near 'maybe')",
        "7: not a duration (seconds, or a number with s, m, h or d) (near 'soon')"]


def test_system_checks_come_in_line_order_among_the_others(tmp_path):
    p = write(tmp_path, "workers many\nuser no-such-user-xyz\npermit 10.0.0.0\nchroot /gone/../tmp\n")
    assert [line.split(":")[1] for line in problems(p)] == ["1", "2", "3", "4"]
    assert problems(p)[3].endswith("no such directory (near '/gone/../tmp')")


def test_methods_username_needs_a_readable_passwd_file(tmp_path):
    p = write(tmp_path, "methods username none\npermit 0/0\n", "x.conf")
    assert problems(p) == ["%s:1: 'methods username' needs a 'passwd FILE' line" % p]
    bad = write(tmp_path, "alice:plaintext\n", "users")
    p = write(tmp_path, "methods username\npasswd %s\npermit 0/0\n" % bad, "x.conf")
    assert problems(p)[0].startswith("%s:1: crypt or plaintext password of 'alice' refused" % bad)
    p = write(tmp_path, "methods username\n\npasswd /nonexistent/users\npermit 0/0\n", "x.conf")
    assert problems(p) == ["%s:3: passwd /nonexistent/users: cannot read: No such file or directory" % p]
    good = write(tmp_path, "alice:%s\n" % PW.make_hash(b"pw", 4), "users")
    p = write(tmp_path, "methods username\npasswd %s\npermit 0/0\n" % good, "x.conf")
    cfg = L.load(p)
    assert cfg.passwd_db.verify("alice", b"pw") and not cfg.passwd_db.verify("alice", b"no")
    assert not [w for w in cfg.warnings if "bcrypt" in w[2]]


def test_a_passwd_file_of_mixed_costs_is_a_warning_on_its_line(tmp_path):
    mixed = write(tmp_path, "alice:%s\nbob:%s\ncarol:%s\n" % (
        PW.make_hash(b"a", 4), PW.make_hash(b"b", 4), PW.make_hash(b"c", 5)), "users")
    p = write(tmp_path, "methods username\n\npasswd %s\npermit 0/0\n" % mixed, "x.conf")
    cfg = L.load(p)
    (warning,) = [w for w in cfg.warnings if "bcrypt" in w[2]]
    assert warning[:2] == (p, 3)
    assert warning[2].startswith("passwd %s: bcrypt costs differ (2 at cost 4, 1 at cost 5): unknown names are "
                                 "checked at cost 4, so a failed login as one of the 1 user of another cost" % mixed)


def test_route_file_problems_keep_their_lines(tmp_path):
    rt = write(tmp_path, "127.0.0.1 10.0.0.0 255.0.0.0\nnot-an-address ALL\n", "route")
    p = write(tmp_path, "route %s\npermit 0/0\n" % rt)
    assert problems(p) == ["%s:2: if_addr must be an address of this host (near 'not-an-address')" % rt]
    p = write(tmp_path, "\nroute /nonexistent/route\npermit 0/0\n")
    assert problems(p) == ["%s:2: Unable to open routing file (/nonexistent/route): No such file or directory" % p]
    rt = write(tmp_path, "127.0.0.2 10.0.0.0 255.0.0.0\n", "route")
    p = write(tmp_path, "route %s\npermit 0/0\n" % rt)
    assert L.load(p).route_table.lookup(4, R.ip_key("10.1.2.3")[1]).if_addr == "127.0.0.2"


def test_referenced_files_wait_for_a_clean_main_file(tmp_path):
    # as always: the passwd and route files are read only when every line parsed
    p = write(tmp_path, "methods username\nworkers many\nroute /nonexistent/route\n")
    assert problems(p) == ["%s:2: not a number (near 'many')" % p]


def test_unreadable_userfile_is_no_match_with_a_warning(tmp_path):
    p = write(tmp_path, "permit *=/nonexistent/users 0/0\npermit *=eve 0/0\n", "x.conf")
    cfg = L.load(p)
    assert cfg.warnings == [(p, 1, "Unable to open userfile (/nonexistent/users)")]
    rule = cfg.ruleset.match(R.Request(R.ip_key("1.1.1.1"), R.ip_key("2.2.2.2"), 1, "eve"))
    assert rule.line == 2


def test_userfile_warnings_come_before_the_whole_file_ones(tmp_path):
    p = write(tmp_path, "deny *=/nonexistent/a 0/0\ndeny *=/nonexistent/b,/nonexistent/a 0/0\n")
    assert [w[1:] for w in L.load(p).warnings] == [
        (1, "Unable to open userfile (/nonexistent/a)"), (2, "Unable to open userfile (/nonexistent/b)"),
        (0, "no permit line: every request will be refused")]


def test_userfiles_are_read(tmp_path):
    uf = write(tmp_path, "alice, bob # the admins\ncarol\n", "staff")
    cfg = L.load(write(tmp_path, "permit *=%s 0/0\n" % uf))
    assert cfg.ruleset.userfiles == {uf: frozenset({"alice", "bob", "carol"})}


def test_host_addresses_only_when_private_destinations_are_guarded(tmp_path):
    cfg = L.load(write(tmp_path, "permit 0/0\n"))
    assert R.ip_key("127.0.0.1") in cfg.own_addresses
    cfg = L.load(write(tmp_path, "deny-private-destinations no\npermit 0/0\n"))
    assert cfg.own_addresses == frozenset()


def test_the_files_read_are_the_ones_the_cache_depends_on(tmp_path):
    uf = write(tmp_path, "alice\n", "staff")
    pw = write(tmp_path, "alice:%s\n" % PW.make_hash(b"pw", 4), "users")
    p = write(tmp_path, "methods username\npasswd %s\npermit *=%s 0/0\n" % (pw, uf))
    with cache.Recording() as files:
        L.load(p)
    assert {p, uf, pw} <= set(files)


# --- issue 13: methods gssapi -----------------------------------------------------------

def test_methods_gssapi_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(L.gss.extras, "gssapi", lambda: None)
    path = write(tmp_path, "# x\nmethods gssapi none\npermit 127.0.0.0/8\n")
    [line] = problems(path)
    assert line.startswith(path + ":2: 'methods gssapi': the Python package gssapi is not installed")
    assert "pip install 'sockd[gssapi]'" in line and "near 'gssapi'" in line


def test_the_gssapi_keytab_must_be_there(tmp_path, monkeypatch):
    monkeypatch.setattr(L.gss, "available", lambda: True)
    path = write(tmp_path, "methods gssapi\ngssapi keytab FILE:/nonexistent/k.keytab\npermit 127.0.0.0/8\n")
    [line] = problems(path)
    assert line.startswith(path + ":2: gssapi keytab /nonexistent/k.keytab: No such file")


def test_the_gssapi_keytab_must_be_readable_by_the_workers_user(tmp_path, monkeypatch):
    monkeypatch.setattr(L.gss, "available", lambda: True)
    kt = tmp_path / "k.keytab"
    kt.write_bytes(b"\x05\x02")
    os.chmod(kt, 0o600)
    path = write(tmp_path, "user nobody\nmethods gssapi\ngssapi keytab %s\npermit 127.0.0.0/8\n" % kt)
    [line] = problems(path)
    assert line.startswith(path + ":3: gssapi keytab %s cannot be read by user nobody" % kt)
    os.chmod(kt, 0o644)
    assert L.load(path).gssapi_keytab == str(kt)


def test_gssapi_settings_parse_with_their_defaults(tmp_path):
    cfg = L.load(write(tmp_path, "permit 127.0.0.0/8\n"))
    assert (cfg.gssapi_service, cfg.gssapi_levels, cfg.gssapi_nec, cfg.gssapi_keytab) == (("rcmd",), (0, 1, 2),
                                                                                         True, None)
    cfg = L.load(write(tmp_path, "gssapi levels integrity 2\ngssapi service rcmd/localhost socks\n"
                                 "gssapi nec no\npermit 127.0.0.0/8\n"))
    assert (cfg.gssapi_levels, cfg.gssapi_service, cfg.gssapi_nec) == ((1, 2), ("rcmd/localhost", "socks"), False)
    with pytest.raises(ConfigError) as e:
        L.load(write(tmp_path, "gssapi levels clear per-message\n"))
    assert "near 'per-message'" in e.value.lines()[0]


def test_a_replay_cache_directory_the_workers_cannot_write_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(L.gss, "available", lambda: True)
    rc = tmp_path / "rc"
    rc.mkdir()
    os.chmod(rc, 0o755)
    monkeypatch.setenv("KRB5RCACHEDIR", str(rc))
    path = write(tmp_path, "user nobody\nmethods gssapi\npermit 127.0.0.0/8\n")
    [w] = [w for w in L.load(path).warnings if "replay cache" in w[2]]
    assert w[:2] == (path, 2) and "%s (KRB5RCACHEDIR) is not writable by user nobody" % rc in w[2]
    os.chmod(rc, 0o1777)
    assert not [w for w in L.load(path).warnings if "replay cache" in w[2]]


# --- issue 14: the way-out file -------------------------------------------------------

def test_the_way_out_file_is_read_with_its_own_lines(tmp_path):
    up = tmp_path / "up.conf"
    up.write_text("direct 10.0.0.0/8\nsockd @=socks5://up1:0 ALL\n")
    path = write(tmp_path, "upstream %s\npermit 127.0.0.0/8\n" % up)
    [line] = problems(path)
    assert line.startswith("%s:2: bad server port" % up)
    up.write_text("direct 10.0.0.0/8\nsockd ALL\n")
    assert problems(path) == ["%s:2: a sockd line needs its servers here (@=SERVER,... or sockd@SERVER)" % up]
    up.write_text("direct 10.0.0.0/8\nsockd@socks5h://up1:1081 ALL\n")
    cfg = L.load(path)
    assert [e.line for e in cfg.wayout.entries] == [1, 2]
    assert L.load(write(tmp_path, "permit 127.0.0.0/8\n", "plain.conf")).wayout is None


def test_an_unreadable_way_out_file_is_an_error_on_its_directive(tmp_path):
    path = write(tmp_path, "# x\nupstream /nonexistent/up.conf\npermit 127.0.0.0/8\n")
    assert problems(path) == [path + ":2: upstream /nonexistent/up.conf: cannot read: No such file or directory"]


def test_credentials_need_a_file_only_root_may_read(tmp_path):
    up = tmp_path / "up.conf"
    up.write_text("sockd@socks5://alice:s3cret@up1:1081 ALL\n")
    os.chmod(up, 0o644)
    path = write(tmp_path, "upstream %s\npermit 127.0.0.0/8\n" % up)
    [line] = problems(path)
    assert line == ("%s:1: credentials in a file that others may read (owner uid 0, mode 0644): chown root and "
                    "chmod 600 %s" % (up, up))
    assert "s3cret" not in line
    os.chmod(up, 0o600)
    assert L.load(path).wayout.entries[0].servers[0].password == "s3cret"


def test_a_kept_configuration_is_out_of_the_collectors_sight(tmp_path):
    """load(keep=True), the server's: what exists once it is read is frozen
    (gc.freeze), so the collector never walks a large file's objects; the
    collector is on again after, and a plain load freezes nothing."""
    conf = tmp_path / "sockd.conf"
    conf.write_text("".join("deny 10.%d.0.0/16\n" % i for i in range(50)) + "permit 0/0\n")
    gc.unfreeze()
    try:
        L.load(str(conf))
        assert gc.get_freeze_count() == 0 and gc.isenabled()
        cfg = L.load(str(conf), keep=True)
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        assert len(cfg.ruleset.rules) == 51
    finally:
        gc.unfreeze()
