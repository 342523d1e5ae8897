"""gss: the pure parts of the acceptor's edge module (which service names
are acceptable, the short name of a principal) and what it says when the
optional package is missing.  Contexts with a real realm:
tests/integration/test_gssapi.py."""

import pytest

from sockd import gss


@pytest.mark.parametrize("target, names, ok", [
    ("rcmd/localhost@SOCKS.TEST", ("rcmd",), True),
    ("rcmd/127.0.0.1@SOCKS.TEST", ("rcmd",), True),
    ("socks/localhost@SOCKS.TEST", ("rcmd",), False),
    ("socks/localhost@SOCKS.TEST", ("rcmd", "socks"), True),
    ("rcmd/localhost@SOCKS.TEST", ("rcmd/localhost",), True),
    ("rcmd/other@SOCKS.TEST", ("rcmd/localhost",), False),
    ("rcmd/localhost@SOCKS.TEST", ("rcmd/localhost@SOCKS.TEST",), True),
    ("rcmd/localhost@OTHER.TEST", ("rcmd/localhost@SOCKS.TEST",), False),
    ("rcmd/localhost@SOCKS.TEST", ("rcmd@localhost",), True),      # the host-based form
    ("", ("rcmd",), False),
    ("rcmdx/localhost@R", ("rcmd",), False),
])
def test_service_matches(target, names, ok):
    assert gss.service_matches(target, names) is ok


def test_short_name():
    assert gss.short_name("alice@SOCKS.TEST") == "alice"
    assert gss.short_name("a@b@C") == "a@b"
    assert gss.short_name("alice") == "alice"


def test_missing_names_the_extra_and_the_build_dependency():
    assert "pip install 'sockd[gssapi]'" in gss.MISSING and "libkrb5-dev" in gss.MISSING


def test_the_acceptor_bounds_the_context_tokens():
    acc = gss.Acceptor(None, ("rcmd",))
    acc.rounds = gss.MAX_ROUNDS
    with pytest.raises(gss.GssFailure, match="more than %d context tokens" % gss.MAX_ROUNDS):
        acc.step(b"x")
    assert not acc.complete
