"""sockd/client/__init__.py: what ``import sockd.client`` gives and what it
costs.

The public names are the library's own objects; and, checked in a fresh
interpreter (``python3 -X importtime``, as issue 11 asks), importing the
client library pulls in none of the server's process code: not the
privilege dropping (sockd.privileges), not the pid file (sockd.pidfile),
nor the server, its loop or its sessions.
"""

import importlib
import os
import subprocess
import sys

import sockd.client as client
from sockd.client import core

# the module, not the function of the same name that the package exports
socksify_module = importlib.import_module("sockd.client.socksify")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER_ONLY = ("sockd.privileges", "sockd.pidfile", "sockd.master", "sockd.serving", "sockd.models",
               "sockd.loop", "sockd.session", "sockd.log", "sockd.limits", "sockd.configload", "sockd.passwd",
               "sockd.cache", "sockd.daemonize", "sockd.cli")


def test_public_names():
    assert sorted(client.__all__) == sorted(
        ["SocksConfigError", "SocksDenied", "SocksError", "SocksRefused", "SocksServerError",
         "create_connection", "route", "socksocket", "socksified", "socksify", "unsocksify"])
    for name in client.__all__:
        assert getattr(client, name) is getattr(core if hasattr(core, name) else socksify_module, name)


def test_import_sockd_client_does_not_pull_in_server_code():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sockd.client"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "sockd.client" in imported and "sockd.client.core" in imported
    assert not imported & set(SERVER_ONLY), sorted(imported & set(SERVER_ONLY))
