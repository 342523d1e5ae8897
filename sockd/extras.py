"""The libraries that only some configurations use, imported when one does:
gssapi (``methods gssapi``; an optional extra), bcrypt (a ``passwd``
file) and sqlite3 (``quota`` and ``accounting``: the accounting
database).  Every other module is imported at the top of its file.

Why: every fork of the master copies its page tables and every child
pays for the pages it touches, so a fork-model client costs more the
bigger the master is: about 10 us per MB of anonymous memory and 0.7 us
per mapping, at the fork and again at the child's exit
(docs/performance.md section 3).  The gssapi package alone is 3.9 MB and
250 mappings (some 40 extension modules); sqlite3 0.5 MB and 20, bcrypt 9
mappings.

When: ``load_for(cfg)`` loads what a configuration uses, where one is
read (configload.load, and cache.load for inetd mode's frozen file): at
start and at every reload, in the master, before any fork, and before a
chroot or a change of user could hide the library.  So a fork-model child
finds it in sys.modules and never reads a file for it.  sqlite3 is
loaded by accounting.Store, which only the master opens (and the
tools).  Not on a recheck's copy of a new configuration
(channel.decode): an old worker may be in a chroot, and it only
re-checks its connections.  The users call the functions here where they
use the library (the import of a loaded module is a dictionary look-up).
``LAZY`` names them; tests/unit/test_imports.py holds that ``import
sockd.cli`` loads none of them and that a configuration using each loads
it.  Imports nothing of sockd.
"""

LAZY = ("gssapi", "bcrypt", "sqlite3")


def load_for(cfg):
    """Load the libraries configuration ``cfg`` uses: gssapi for ``methods
    gssapi`` (when installed: configload refuses the method otherwise),
    bcrypt for a ``passwd`` file."""
    if "gssapi" in cfg.methods:
        gssapi()
    if cfg.passwd_db is not None:
        bcrypt()


def gssapi():
    """The gssapi package with gssapi.raw and gssapi.exceptions, or None
    when the optional extra is not installed (gss.MISSING says what to
    install)."""
    try:
        import gssapi as module
        import gssapi.raw          # noqa: F401  module.raw: wrap, unwrap
        import gssapi.exceptions   # noqa: F401  module.exceptions.GSSError
    except ImportError:
        return None
    return module


def bcrypt():
    """The bcrypt package (a dependency of sockd: always there)."""
    import bcrypt as module
    return module


def sqlite3():
    """The standard library's sqlite3."""
    import sqlite3 as module
    return module
