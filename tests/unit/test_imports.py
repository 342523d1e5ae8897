"""The shape of the package as its imports show it: no import circle and no
import hidden inside a function.  (That the client library pulls in no
server code is test_client_package.py's.)"""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

import sockd
from sockd import extras

PKG = pathlib.Path(sockd.__file__).parent

# imports inside functions that are there on purpose, each for its reason
ALLOWED_LOCAL = {
    # python-daemon is third-party and needed only when detaching
    ("daemonize", "should_detach"), ("daemonize", "daemonize"),
    # preload() exists to import what a chroot would hide
    ("privileges", "preload"),
    # the libraries only some configurations use, loaded when one does: every
    # fork copies the master's memory and mappings (docs/performance.md
    # section 3); extras.LAZY lists them, the tests below hold it
    ("extras", "gssapi"), ("extras", "bcrypt"), ("extras", "sqlite3"),
}


def modules():
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts) or "__init__", f, ast.parse(f.read_text())


def resolve(mod, node):
    """The sockd modules a top-level ``from . import`` names, as dotted paths
    inside the package."""
    if not isinstance(node, ast.ImportFrom) or node.level == 0:
        return set()
    base = mod.split(".")[:-node.level] if "." in mod or node.level > 1 else []
    if mod.endswith("__init__"):
        base = mod.split(".")[:-1]
    prefix = base + (node.module.split(".") if node.module else [])
    if node.module:
        return {".".join(prefix)}
    return {".".join(prefix + [a.name]) for a in node.names}


def test_no_import_circle():
    graph = {}
    names = {m for m, _, _ in modules()}
    for mod, _, tree in modules():
        deps = set()
        for node in tree.body:
            deps |= resolve(mod, node)
        graph[mod] = {d for d in deps if d in names and d != mod}

    def visit(m, path):
        assert m not in path, " -> ".join(path + [m])
        for d in graph.get(m, ()):
            visit(d, path + [m])
    for m in graph:
        visit(m, [])


def test_no_import_inside_a_function():
    found = []
    for mod, f, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and (mod, node.name) not in ALLOWED_LOCAL:
                        found.append("%s:%d %s" % (f.name, sub.lineno, ast.unparse(sub)))
    assert not found, found


def test_test_files_have_unique_names():
    """pytest imports test files by their base name (no packages here): two
    files of one name in different directories stop the whole run at
    collection, as tests/unit/test_upstream.py and an integration file of
    the same name once did."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen = {}
    for d, _, files in os.walk(tests):
        for f in files:
            if f.startswith("test_") and f.endswith(".py"):
                seen.setdefault(f, []).append(os.path.relpath(os.path.join(d, f), tests))
    assert not {f: p for f, p in seen.items() if len(p) > 1}


def loaded_after(code):
    """Which of extras.LAZY a fresh interpreter has loaded after ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(m for m in %r if m in sys.modules))\n" % (extras.LAZY,)
    env = dict(os.environ, PYTHONPATH=str(PKG.parent))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_the_server_loads_no_lazy_library_of_its_own():
    """What the master holds at every fork: none of extras.LAZY unless the
    configuration uses it (docs/performance.md section 3)."""
    assert extras.LAZY == ("gssapi", "bcrypt", "sqlite3")
    assert loaded_after("import sockd.cli, sockd.serving, sockd.master, sockd.session") == set()


# what the server once imported for one call each, and no longer does, for
# what they cost every fork-model client: random's at-fork hook re-seeds in
# every child (tempfile brought it: cache.store opens its file itself);
# multiprocessing's package and synchronize module (limits.shared_lock makes
# the same semaphore); inspect with dis and ast (cache._ctor_params reads
# the code object)
NOT_IN_THE_SERVER = ("random", "tempfile", "multiprocessing", "inspect")


def test_the_server_does_without_what_it_used_once():
    env = dict(os.environ, PYTHONPATH=str(PKG.parent))
    probe = ("import sockd.cli, sockd.serving, sockd.master, sys\nfrom sockd import limits\n"
             "limits.AddressTable(limits.COUNT)\nprint(' '.join(m for m in %r if m in sys.modules))"
             % (NOT_IN_THE_SERVER,))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", (out.stdout, out.stderr)


def test_a_configuration_loads_what_it_uses(tmp_path):
    """Read at start and at a reload, in the master, before any fork: a
    plain file loads none, ``passwd`` loads bcrypt, ``methods gssapi`` the
    gssapi package, the accounting database (opened by the master) sqlite3."""
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:$2b$04$" + "a" * 53 + "\n")
    files = {"plain": "permit 127.0.0.0/8\n", "passwd": "passwd %s\npermit 127.0.0.0/8\n" % passwd,
             "gssapi": "methods gssapi\npermit 127.0.0.0/8\n"}
    load = "from sockd import configload\nconfigload.load(%r)"
    for name, text in files.items():
        (tmp_path / (name + ".conf")).write_text(text)
    assert loaded_after(load % str(tmp_path / "plain.conf")) == set()
    assert loaded_after(load % str(tmp_path / "passwd.conf")) == {"bcrypt"}
    if extras.gssapi() is not None:
        assert loaded_after(load % str(tmp_path / "gssapi.conf")) == {"gssapi"}
    store = "from sockd import accounting\naccounting.Store(%r).close()" % str(tmp_path / "acc.db")
    assert loaded_after(store) == {"sqlite3"}


def test_the_frozen_configuration_loads_what_it_uses(tmp_path):
    """inetd mode's cache (cache.load) loads what configload.load would (the
    process may chroot before its first context step), and the cache does
    not depend on the library's directories; a recheck's copy
    (channel.decode, in an old worker that may be in a chroot) loads
    nothing."""
    if extras.gssapi() is None:
        pytest.skip("the gssapi extra is not installed")
    conf = tmp_path / "sockd.conf"
    conf.write_text("methods gssapi\npermit 127.0.0.0/8\n")
    d = str(tmp_path / "cache")
    store = ("from sockd import cache, channel, configload\nwith cache.Recording() as files:\n"
             "    cfg = configload.load(%r)\nassert cache.store(%r, cfg, files, %r)\n"
             "open(%r, 'wb').write(channel.encode(cfg))" % (str(conf), str(conf), d, str(tmp_path / "body")))
    assert loaded_after(store) == {"gssapi"}
    (cached,) = os.listdir(d)
    with open(os.path.join(d, cached)) as f:
        deps = [dep for dep, _ in json.loads(f.readline())["deps"]]
    assert not [dep for dep in deps if "gssapi" in dep], deps
    assert loaded_after("from sockd import cache\nassert cache.load(%r, %r) is not None" % (str(conf), d)) \
        == {"gssapi"}
    decode = "from sockd import channel\nassert channel.decode(open(%r, 'rb').read()).methods"
    assert loaded_after(decode % str(tmp_path / "body")) == set()


@pytest.mark.parametrize("name", extras.LAZY)
def test_each_lazy_library_loads(name):
    if name == "gssapi" and extras.gssapi() is None:
        pytest.skip("the gssapi extra is not installed")
    assert loaded_after("from sockd import extras\nextras.%s()" % name) >= {name}
