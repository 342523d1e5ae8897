"""The start-up pipe between a detaching sockd and the shell that started
it, and the choice whether to detach."""

import os

from sockd import daemonize as D


def verdict(line, capsys):
    r, w = os.pipe()
    ready = D.Ready(w)
    if line == "ok":
        ready.ok()
    elif line is not None:
        ready.fail(line)
    else:
        os.close(w)
    ready.ok()                      # a second report is a no-op: the pipe is closed
    try:
        return D.wait_for_daemon(r), capsys.readouterr().err
    finally:
        os.close(r)


def test_the_shell_hears_the_daemons_verdict(capsys):
    assert verdict("ok", capsys) == (0, "")
    assert verdict("port 1080 is\ntaken", capsys) == (1, "sockd: port 1080 is taken\n")
    assert verdict(None, capsys) == (1, "sockd: the daemon stopped while starting; see the log\n")


def test_a_ready_without_a_pipe_does_nothing():
    D.Ready().ok()
    D.Ready().fail("nobody listens")


def test_flags_decide_before_the_parent_does():
    assert D.should_detach(True, False) is False
    assert D.should_detach(True, True) is False      # -F wins (cli refuses -F -D before this)
    assert D.should_detach(False, True) is True
