"""The open-files limit (issue 17, scale): what a configuration wants, how
the limits are raised (each case in a forked child, so that the test
process keeps its own), and where a worker stops accepting."""

import errno
import os
import resource

from sockd import config as C
from sockd import limits as L

NOFILE = resource.RLIMIT_NOFILE


def in_child(fn):
    """Run ``fn`` in a forked child; returns what it returned (text), or
    its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except BaseException as exc:
            out = "%s: %s" % (type(exc).__name__, exc)
        os.write(w, str(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def may_raise_hard():
    """Can this process raise its hard limit (root with CAP_SYS_RESOURCE)?"""
    def probe():
        soft, hard = resource.getrlimit(NOFILE)
        try:
            resource.setrlimit(NOFILE, (hard + 1, hard + 1))
        except (ValueError, OSError):
            return "no"
        return "yes"
    return in_child(probe) == "yes"


def test_what_a_configuration_wants():
    cfg = C.parse_text("permit 127.0.0.0/8\n")
    assert cfg.limit_descriptors == 0 and L.descriptors_wanted(cfg) == 65536
    cfg = C.parse_text("limit clients 1000\npermit 127.0.0.0/8\n")
    assert L.descriptors_wanted(cfg) == 4 * 1000 + 256
    cfg = C.parse_text("limit clients 1000\nlimit descriptors 50000\npermit 127.0.0.0/8\n")
    assert L.descriptors_wanted(cfg) == 50000


def test_soft_goes_to_hard_and_nothing_is_lowered():
    def run():
        soft, hard = resource.getrlimit(NOFILE)
        resource.setrlimit(NOFILE, (min(soft, 256), hard))
        got = L.raise_descriptors(64)          # wants less than there is: soft to hard, hard kept
        return "%s %s" % (got, resource.getrlimit(NOFILE))
    hard = resource.getrlimit(NOFILE)[1]
    assert in_child(run) == "%s %s" % ((hard, hard), (hard, hard))


def test_the_hard_limit_is_raised_only_when_allowed_and_never_past_nr_open():
    hard = resource.getrlimit(NOFILE)[1]

    def run():
        resource.setrlimit(NOFILE, (128, hard))
        return str(L.raise_descriptors(hard + 5000, nr_open=hard + 100))
    if may_raise_hard():
        assert in_child(run) == str((hard + 100, hard + 100))
    else:
        # an unprivileged start (or root without CAP_SYS_RESOURCE): soft to hard only
        assert in_child(run) == str((hard, hard))


def test_the_warning_says_how_many_clients_fit():
    assert L.descriptors_short(-1, 65536) is None          # unlimited
    assert L.descriptors_short(65536, 65536) is None
    text = L.descriptors_short(20000, 65536)
    assert text.startswith("open files limit 20000 is below the 65536 this configuration wants")
    assert "some %d clients" % ((20000 - 256) // 2) in text


def test_accept_ceiling_keeps_a_reserve():
    def run():
        hard = resource.getrlimit(NOFILE)[1]
        resource.setrlimit(NOFILE, (1024, hard))
        a = L.accept_ceiling()
        resource.setrlimit(NOFILE, (100, hard))
        return "%d %d" % (a, L.accept_ceiling())
    assert in_child(run) == "%d 50" % (1024 - L.ACCEPT_RESERVE)
    err = L.nearly_out(19990)
    assert "19990" in err.strerror and err.errno == errno.EMFILE
