"""The errors module: ConfigError's lines and summary, the one way they are
reported, and the exit statuses."""

from sockd import errors as E


def test_bad_keeps_its_token():
    b = E.Bad("not a number", "many")
    assert str(b) == "not a number" and b.token == "many"
    assert E.Bad("no token").token is None


def test_config_error_lines_and_summary():
    exc = E.ConfigError([("a.conf", 2, "not a number (near 'x')"), ("users", 7, "expected USER:HASH")])
    assert exc.lines() == ["a.conf:2: not a number (near 'x')", "users:7: expected USER:HASH"]
    assert str(exc) == "\n".join(exc.lines())
    assert exc.summary("a.conf") == "2 problems in a.conf"
    assert E.ConfigError([("a.conf", 0, "cannot read")]).summary("a.conf") == "1 problem in a.conf"


def test_report_gives_every_line_to_every_emit_in_order():
    exc = E.ConfigError([("a", 1, "one"), ("a", 2, "two")])
    got = []
    E.report_config_error(exc, lambda s: got.append(("log", s)), lambda s: got.append(("tty", s)))
    assert got == [("log", "a:1: one"), ("tty", "a:1: one"), ("log", "a:2: two"), ("tty", "a:2: two")]


def test_report_uses_the_subclass_lines():
    class Unnumbered(E.ConfigError):
        def lines(self):
            return ["%s: %s" % (p[0], p[2]) for p in self.problems]
    got = []
    E.report_config_error(Unnumbered([("SOCKS_SERVER", 0, "empty server list")]), got.append)
    assert got == ["SOCKS_SERVER: empty server list"]


def test_to_stderr(capsys):
    E.to_stderr("x.conf:1: bad")
    assert capsys.readouterr() == ("", "x.conf:1: bad\n")


def test_protocol_error_halt_and_statuses():
    assert E.ProtocolError("short", b"\x00\x5b").reply == b"\x00\x5b"
    assert E.ProtocolError("version 9").reply is None
    assert E.Halt("port taken").status == E.EXIT_ERROR
    assert E.Halt("boot", E.WORKER_BOOT_ERROR).status == 3
    assert (E.EXIT_OK, E.EXIT_ERROR, E.EXIT_USAGE, E.WORKER_BOOT_ERROR, E.EXIT_TOOL_USAGE) == (0, 1, 2, 3, 255)


def test_errors_imports_nothing_of_sockd():
    import ast
    tree = ast.parse(open(E.__file__).read())
    imported = [n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."])]
    assert all(not n.startswith(("sockd", ".")) for n in imported), imported
    assert all(not isinstance(node, ast.ImportFrom) or node.level == 0 for node in ast.walk(tree))
