"""The shape of the package as its imports show it: no import circle and no
import hidden inside a function.  (That the client library pulls in no
server code is test_client_package.py's.)"""

import ast
import os
import pathlib

import sockd

PKG = pathlib.Path(sockd.__file__).parent

# imports inside functions that are there on purpose, each for its reason
ALLOWED_LOCAL = {
    # python-daemon is third-party and needed only when detaching
    ("daemonize", "should_detach"), ("daemonize", "daemonize"),
    # preload() exists to import what a chroot would hide
    ("privileges", "preload"),
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
