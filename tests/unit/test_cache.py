"""The parsed-configuration cache: JSON, never pickle; trusted files only;
invalidated by any change to what the parse read."""

import json
import os
import socket

import pytest

from sockd import cache as K
from sockd import config as C
from sockd import configload as L
from sockd import rules as R

CONF = """# every form the parser knows
listen 127.0.0.1:0
listen [::1]:0
timeout idle 1h
log facility local4
reload recheck yes
permit *=fred,/{users} 10.0.0.0 255.0.0.0 192.168.1.0 255.255.255.0 eq telnet : echo %u
deny ?=I 10.1.0.0/16 ALL lt 1024
permit ?=n 2001:db8::/32 ::/0 ge 8000
permit .example.org 0.0.0.0
permit 10.2.0.0 255.255.0.0 www.example.com 0.0.0.0 neq 25
#NO_IDENTD: mail -s 'no identd on %A' root
#BAD_ID: mail -s '%U is not %u' root
"""


def requests():
    def req(src, dst, port, user=None, dn=()):
        return R.Request(R.ip_key(src), R.ip_key(dst), port, user, (), dn)
    return [req("10.3.3.3", "192.168.1.9", 23, "fred"), req("10.3.3.3", "192.168.1.9", 23, "wilma"),
            req("10.3.3.3", "192.168.1.9", 23, "barney"), req("10.1.2.3", "8.8.8.8", 53),
            req("2001:db8::1", "2001:db8::2", 8080), req("10.2.1.1", "1.2.3.4", 80, dn=("www.example.com",)),
            req("10.2.1.1", "1.2.3.4", 25, dn=("www.example.com",)), req("127.0.0.1", "127.0.0.1", 80)]


@pytest.fixture
def conf(tmp_path):
    users = tmp_path / "users"
    users.write_text("wilma, barney\n")
    path = tmp_path / "sockd.conf"
    path.write_text(CONF.replace("{users}", str(users).lstrip("/")))
    return path


def same(a, b):
    assert type(a) is type(b)
    assert K.encode(a) == K.encode(b)


def test_round_trip_keeps_every_setting_and_decision(conf):
    cfg = L.load(str(conf))
    back = K.decode(K.encode_checked(cfg))
    same(cfg, back)
    for s in C.SETTINGS:
        assert back.get(s.key) == cfg.get(s.key), s.key
    assert back.ruleset.no_identd == cfg.ruleset.no_identd and back.ruleset.bad_id == cfg.ruleset.bad_id
    assert back.ruleset.userfiles == cfg.ruleset.userfiles
    assert [r.where for r in back.ruleset.rules] == [r.where for r in cfg.ruleset.rules]
    for req in requests():
        a, b = cfg.ruleset.match(req), back.ruleset.match(req)
        assert (a and a.where) == (b and b.where)


def test_only_sockd_classes_and_no_code(conf):
    with pytest.raises(K.Uncacheable):
        K.encode({"x": open(os.devnull)})
    with pytest.raises(K.Uncacheable):
        K.encode(lambda: 0)
    blob = K.encode(L.load(str(conf))).decode()
    classes, data = blob.split("\n", 1)
    for evil in ([["os", "system", [], None]], [["posixpath", "join", [], None]],
                 [["sockd.cli", "main", [], None]], [["sockd.rules", "AddrSpec", ["__class__"], None]],
                 [["sockd.rules", "AddrSpec", ["kind"], ["kind"]]]):
        with pytest.raises((ValueError, TypeError, AttributeError, KeyError)):
            K.decode(json.dumps(evil) + "\n" + json.dumps({"o": [0, "x"]}))
    with pytest.raises(ValueError):
        K.decode(classes + "\n" + '{"q": 1}')


def test_cache_file_used_only_while_valid_and_trusted(conf, tmp_path):
    d = tmp_path / "cache"
    with K.Recording() as files:
        cfg = L.load(str(conf))
    users = str(tmp_path / "users")
    assert str(conf) in files and users in files
    assert K.load(str(conf), str(d)) is None                # nothing yet
    path = K.store(str(conf), cfg, files, str(d))
    assert path and os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(d).st_mode & 0o777 == 0o700
    hit = K.load(str(conf), str(d))
    assert hit is not None
    same(cfg, hit)
    # a userfile that changes (the configuration does not) is a miss
    with open(users, "a") as f:
        f.write("pebbles\n")
    assert K.load(str(conf), str(d)) is None
    with open(users, "w") as f:
        f.write("wilma, barney\n")
    assert K.load(str(conf), str(d)) is not None
    # so is an edit of the file itself, even keeping size and time
    st = os.stat(conf)
    text = conf.read_text()
    conf.write_text(text.replace("eq telnet", "eq 000023"))         # same size, same meaning
    os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert K.load(str(conf), str(d)) is None
    conf.write_text(text)
    assert K.load(str(conf), str(d)) is not None
    # a cache file others could have written is ignored
    os.chmod(path, 0o620)
    assert K.load(str(conf), str(d)) is None
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    assert K.load(str(conf), str(d)) is None
    os.chown(path, 0, 0)
    os.chmod(d, 0o777)
    assert K.load(str(conf), str(d)) is None
    os.chmod(d, 0o700)
    # tampering with the body is a miss, not a different configuration
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw.replace(b'"permit"', b'"deny"', 1))
    assert K.load(str(conf), str(d)) is None
    # a symbolic link is not followed
    os.unlink(path)
    other = tmp_path / "elsewhere.json"
    other.write_bytes(raw)
    os.chmod(other, 0o600)
    os.symlink(other, path)
    assert K.load(str(conf), str(d)) is None


def test_cache_directory_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SOCKD_CACHE_DIR", "")
    assert K.cache_path("/etc/sockd.conf") is None
    monkeypatch.setenv("SOCKD_CACHE_DIR", str(tmp_path))
    assert os.path.dirname(K.cache_path("/etc/sockd.conf")) == str(tmp_path)
    monkeypatch.delenv("SOCKD_CACHE_DIR")
    assert K.cache_path("/etc/sockd.conf").startswith("/var/cache/sockd/")


def test_a_configuration_with_url_upstreams_is_a_cache_hit(tmp_path):
    """inetd mode's frozen file of a configuration whose way-out file lists
    URL upstreams: it once stored but never loaded again (every connection
    parsed the files anew), because wayout.Server could not be rebuilt."""
    up = tmp_path / "wayout"
    up.write_text("sockd @=socks5h://u:pw@up1:1081?pipeline,127.0.0.1:1082 ALL\n")
    os.chmod(up, 0o600)
    path = tmp_path / "sockd.conf"
    path.write_text("permit 127.0.0.0 255.0.0.0\nupstream %s\n" % up)
    d = tmp_path / "cache"
    with K.Recording() as files:
        cfg = L.load(str(path))
    assert K.store(str(path), cfg, files, str(d))
    hit = K.load(str(path), str(d))
    assert hit is not None
    same(cfg, hit)
    servers = hit.wayout.entries[0].servers
    assert [(s.label, s.pipeline, s.password, s.family) for s in servers] == [
        ("socks5h://up1:1081?pipeline", True, "pw", None), ("127.0.0.1:1082", False, None, socket.AF_INET)]
