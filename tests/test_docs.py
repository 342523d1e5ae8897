"""The manual pages: lint-clean, and every flag and directive documented."""

import os
import re
import subprocess

from helpers import ROOT, need
from sockd import cli, settings

MAN = os.path.join(ROOT, "man")


def page(name):
    with open(os.path.join(MAN, name)) as f:
        return f.read()


def plain(troff):
    """Roff source with font escapes and backslash-escapes removed."""
    t = re.sub(r"\\f[BIRP]", "", troff)
    return t.replace("\\-", "-").replace("\\(em", "--")


def test_man_pages_are_lint_clean():
    mandoc = need("mandoc")
    pages = sorted(os.path.join(MAN, p) for p in os.listdir(MAN) if re.search(r"\.[1-8]$", p))
    r = subprocess.run([mandoc, "-T", "lint", "-W", "warning"] + pages, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_every_flag_is_documented():
    text = plain(page("sockd.8"))
    for action in cli.build_parser()._actions:
        for flag in action.option_strings:
            if flag in ("-h", "--help"):
                continue
            assert re.search(r"^\.(TP|B|BR|BI)\b.*%s" % re.escape(flag.replace("-", "-")), text, re.M) \
                or flag in text, flag


def test_every_directive_is_documented():
    text = plain(page("sockd.conf.5"))
    for s in settings.SETTINGS:
        words = s.key.split()
        # ".BI "timeout negotiate" ..." or ".BI listen ..."
        pattern = r"^\.(B|BI|BR)\s+\"?%s\b" % r"\s+".join(map(re.escape, words))
        assert re.search(pattern, text, re.M), "directive %r missing from sockd.conf.5" % s.key
