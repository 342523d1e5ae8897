"""RFC 1929 logins against a real sockd, as an attacker tries them.

* Timing must not tell which user names exist: for a passwd file of cost 5
  (what ``htpasswd -B`` writes) and one of cost 12, the median time of a
  wrong password for a real user and for a name that does not exist are
  within 1.5 times of each other.  Each try comes from its own loopback
  address.
"""

import os
import socket
import statistics
import subprocess
import time

import pytest

import helpers

WRONG = b"not the password"
RIGHT = b"right horse"
TRIES = 30


def sockd_passwd(*args, password=None):
    """The sockd-passwd of the tree under test (its entry point, where an
    installed one is missing)."""
    exe = os.path.join(os.path.dirname(helpers.SOCKD), "sockd-passwd")
    cmd = [exe] if os.path.exists(exe) else [helpers.PYTHON, "-c", "from sockd.tools import main_sockd_passwd; "
                                                                   "main_sockd_passwd()"]
    return subprocess.run(cmd + list(args), input=password, capture_output=True, text=True, timeout=120,
                          cwd=helpers.ROOT)


def passwd_file(tmp_path, cost, users=("alice", "bob")):
    """A passwd file made by sockd-passwd, every user at ``cost``, password RIGHT."""
    path = str(tmp_path / ("users-%d" % cost))
    for i, user in enumerate(users):
        flags = ["-c"] if i == 0 else []
        r = sockd_passwd(*flags, "-i", "-C", str(cost), path, user, password=RIGHT.decode() + "\n")
        assert r.returncode == 0, r.stderr
    assert open(path).read().startswith("alice:$2b$%02d$" % cost)
    return path


def login(proxy, user, password, source="127.0.0.1", timeout=30):
    """One SOCKS 5 username/password login from ``source``.  Returns (the
    RFC 1929 status, seconds from sending the sub-negotiation to the
    reply)."""
    s = socket.create_connection(proxy, timeout, source_address=(source, 0))
    try:
        s.sendall(b"\x05\x01\x02")
        assert helpers.recv_exact(s, 2) == b"\x05\x02"
        u = user.encode()
        msg = b"\x01" + bytes([len(u)]) + u + bytes([len(password)]) + password
        t0 = time.perf_counter()
        s.sendall(msg)
        rep = helpers.recv_exact(s, 2)
        took = time.perf_counter() - t0
    finally:
        s.close()
    assert rep[0] == 1, rep
    return rep[1], took


def server(start_sockd, users, extra="", **kw):
    return start_sockd("methods username\npasswd %s\n%spermit 0/0\n" % (users, extra), **kw)


# --- timing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cost", [5, 12])
def test_a_wrong_password_takes_as_long_whether_the_user_exists_or_not(start_sockd, tmp_path, cost):
    s = server(start_sockd, passwd_file(tmp_path, cost), workers=2)
    for i in range(2):                                    # the helper threads start
        login(s.addr, "alice", WRONG, "127.2.%d.%d" % (cost, 250 + i))
    real, unknown = [], []
    for i in range(TRIES):
        # one failure per address, in turn, so both see the same machine
        tries = [(real, "alice", 2 * i + 2), (unknown, "mallory%d" % i, 2 * i + 3)]
        for times, user, host in (tries if i % 2 else tries[::-1]):
            status, took = login(s.addr, user, WRONG, "127.2.%d.%d" % (cost, host))
            assert status != 0
            times.append(took)
    m_real, m_unknown = statistics.median(real), statistics.median(unknown)
    ratio = max(m_real, m_unknown) / min(m_real, m_unknown)
    print("cost %d: median wrong password for a real user %.1f ms, for an unknown user %.1f ms (%.2fx)" % (
        cost, m_real * 1000, m_unknown * 1000, ratio))
    assert ratio <= 1.5, "cost %d: real user %.1f ms, unknown user %.1f ms" % (cost, m_real * 1000,
                                                                               m_unknown * 1000)
