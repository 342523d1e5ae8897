"""The settings table: one entry per directive, each with a converter that
accepts its own default, and the command-line flags it names."""

import os

from sockd import settings as S
from sockd import validators as V


def test_keys_attributes_and_groups():
    keys = [s.key for s in S.SETTINGS]
    assert len(keys) == len(set(keys)) and set(S.BY_KEY) == set(keys)
    attrs = [s.attr for s in S.SETTINGS]
    assert len(attrs) == len(set(attrs))
    assert S.BY_KEY["timeout negotiate"].attr == "timeout_negotiate"
    assert S.BY_KEY["deny-private-destinations"].attr == "deny_private_destinations"
    assert S.GROUPS == {"timeout", "log", "limit", "bind", "udp", "reload", "socks4", "helpers", "auth", "gssapi",
                        "connect", "resolve", "accounting", "relay"}
    # a two-word key's first word is never a directive of its own
    assert not S.GROUPS & set(keys)


def test_every_setting_is_documented_and_converts():
    for s in S.SETTINGS:
        assert s.doc and s.args and callable(s.convert), s.key
        assert not s.doc.endswith("."), s.key           # one line, as --help shows it


def test_string_defaults_survive_their_converter():
    for s in S.SETTINGS:
        if isinstance(s.default, str):
            assert s.convert(s.default) == s.default, s.key
        elif isinstance(s.default, bool):
            assert s.convert("yes" if s.default else "no") is s.default, s.key
        elif isinstance(s.default, (int, float)):
            assert s.convert(str(s.default).replace(".0", "")) == s.default, s.key
    assert S.BY_KEY["listen"].default == [("0.0.0.0", V.DEFAULT_PORT)]
    assert S.BY_KEY["methods"].many and S.BY_KEY["listen"].repeat


def test_command_line_flags():
    flags = {s.cli: s.key for s in S.SETTINGS if s.cli}
    assert flags == {"-N": "workers", "-m": "model", "-p": "pidfile"}
    p = S.BY_KEY["pidfile"]
    assert p.cli_value("x.pid") == os.path.join(os.getcwd(), "x.pid")
    assert p.cli_value("/run/x.pid") == "/run/x.pid"
    assert p.cli_value("") is None
    assert S.BY_KEY["workers"].cli_value is None
