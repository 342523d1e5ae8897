"""RFC 1929 passwords: only bcrypt hashes are kept, each refusal on its
line; a changed file is read again, a broken one keeps the old users."""

import time

import bcrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import passwd as PW

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_passwd_accepts_only_bcrypt():
    h = PW.make_hash(b"pw", 4)
    text = ("# users\nalice:%s\nbob:%s\ncarol:$apr1$abc$def\ndave:plain\neve:{SHA}xyz\n"
            "frank:$6$salt$hash\nnocolon\n" % (h, h.replace("$2b$", "$2y$")))
    entries, problems = PW.parse(text, "users")
    assert set(entries) == {"alice", "bob"}
    assert [(p[1], p[2].split(" ")[0]) for p in problems] == [
        (4, "MD5"), (5, "crypt"), (6, "SHA"), (7, "SHA"), (8, "expected")]
    assert all(p[0] == "users" for p in problems)


def test_passwd_verify_and_reload(tmp_path):
    f = tmp_path / "users"
    f.write_text("alice:%s\n" % PW.make_hash(b"right", 4))
    db = PW.PasswdFile.load(str(f))
    assert db.verify("alice", b"right")
    assert not db.verify("alice", b"wrong")
    assert not db.verify("mallory", b"right")
    f.write_text("alice:%s\nbob:%s\n" % (PW.make_hash(b"new", 4), PW.make_hash(b"b", 4)))
    assert db.verify("alice", b"new") and db.verify("bob", b"b")
    f.write_text("alice:plaintext\n")          # broken: the old entries stay
    assert db.verify("alice", b"new")


def test_an_unknown_user_costs_a_known_ones_bcrypt_work():
    assert PW._DUMMY.startswith(b"$2b$%02d$" % PW.DEFAULT_COST) and len(PW._DUMMY) == 60
    assert bcrypt.checkpw(b"sockd-no-such-user", PW._DUMMY)
    db = PW.PasswdFile("-", {"alice": PW.make_hash(b"pw").encode()}, None)
    db.refresh = lambda: None
    t0 = time.perf_counter()
    assert not db.verify("alice", b"wrong")
    known = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert not db.verify("mallory", b"wrong")
    unknown = time.perf_counter() - t0
    assert unknown > known / 4          # the same work, whatever a busy machine does to the figures


def test_an_unusable_file_raises_its_problems(tmp_path):
    try:
        PW.PasswdFile.load(str(tmp_path / "none"))
    except ValueError as exc:
        assert exc.args[0] == [(str(tmp_path / "none"), 0, "cannot read: No such file or directory")]
    else:
        raise AssertionError("no ValueError")


@FAST
@given(st.text(max_size=400))
def test_passwd_parser(text):
    entries, problems = PW.parse(text, "pw")
    assert all(v.startswith((b"$2y$", b"$2b$", b"$2a$")) for v in entries.values())
