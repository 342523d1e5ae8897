"""Handing a new configuration to processes forked before it was read:
the memory file every worker and child inherits, for ``reload recheck``.

The master writes; serving processes read when SIGHUP tells them to.
Imports the cache codec (JSON, never pickle), the pure parser and the
log; must not import the master, the process models or the serving
processes.

The rule lines travel as their text (each line's words, ``: command``,
file and line), and the readers parse them again with config.parse_rule:
coding a Rule and its two address fields object by object costs twenty
times as much (issue 17: 2.0 s for 100,000 lines, against 0.1 s).
"""

import copy
import hashlib
import json
import os

from . import cache
from . import config as C
from . import rules as R
from .log import log


class Channel:
    """An anonymous memory file every worker and child inherits.  The master
    writes a header line (generation, what to do, SHA-256 of the body) and
    the configuration as cache.encode() JSON; a reader that finds a body
    that does not match its header (a write in progress) ignores it, and the
    signal that follows the write brings it back."""

    def __init__(self):
        self.fd = os.memfd_create("sockd-config", os.MFD_CLOEXEC)

    def publish(self, generation, cfg, recheck_on):
        """Replace what the file holds with ``cfg`` for ``generation``.  A
        configuration the codec cannot encode is published as an error the
        readers report.  Raises OSError (no memory)."""
        try:
            body, error = C.without_gc(encode, cfg), None
        except Exception as exc:         # reported by the readers, who fall back
            body, error = b"", "%s: %s" % (type(exc).__name__, exc)
        head = json.dumps({"generation": generation, "recheck": bool(recheck_on), "error": error,
                           "sha256": hashlib.sha256(body).hexdigest()}).encode() + b"\n"
        data = head + body
        os.ftruncate(self.fd, 0)
        off = 0
        while off < len(data):
            off += os.pwrite(self.fd, data[off:off + (1 << 20)], off)

    def fetch(self):
        """(generation, recheck, Config) or None (nothing published, or a
        write in progress).  Raises ValueError when the master could not
        encode the configuration."""
        size = os.fstat(self.fd).st_size
        if not size:
            return None
        chunks, off = [], 0
        while off < size:
            chunk = os.pread(self.fd, min(1 << 20, size - off), off)
            if not chunk:
                break
            chunks.append(chunk)
            off += len(chunk)
        data = b"".join(chunks)
        head, _, body = data.partition(b"\n")
        h = json.loads(head)
        if hashlib.sha256(body).hexdigest() != h["sha256"]:
            return None
        if h.get("error"):
            raise ValueError(h["error"])
        return h["generation"], h["recheck"], C.without_gc(decode, body)

    def close(self):
        os.close(self.fd)


def encode(cfg):
    """The body for ``cfg``: a line of JSON with the rule lines' text, then
    cache.encode() of ``cfg`` with a ruleset holding no lines (its hooks
    and userfiles are kept)."""
    rs = cfg.ruleset
    lines = [[r.text, r.command, r.file, r.line] for r in rs.rules]
    bare = copy.copy(cfg)
    bare.ruleset = R.Ruleset([], rs.no_identd, rs.bad_id, rs.userfiles)
    return json.dumps(lines, separators=(",", ":")).encode() + b"\n" + cache.encode(bare)


def decode(body):
    """The Config of an encode() body, its rules parsed again (pure: the
    userfiles' names came along).  Raises ValueError (and its kin)."""
    head, _, rest = body.partition(b"\n")
    cfg = cache.decode(rest)
    bare = cfg.ruleset
    try:
        specs = {}
        rules = [C.parse_rule(text.split(), command, file, line, text, tags=True, specs=specs)
                 for text, command, file, line in json.loads(head)]
    except C.Bad as exc:
        raise ValueError("a rule line does not parse again: %s" % exc) from None
    cfg.ruleset = R.Ruleset(rules, bare.no_identd, bare.bad_id, bare.userfiles)
    return cfg


def fetch_recheck(channel, seen, who):
    """The (generation, Config) the master published for a recheck after
    generation ``seen``, or None (no channel, nothing newer, no recheck
    asked, or a file that cannot be read: then it is logged, as ``who``)."""
    if channel is None:
        return None
    try:
        got = channel.fetch()
    except Exception as exc:
        log.error("%s: cannot re-check live connections: %s" % (who, exc))
        return None
    if got is None:
        return None
    generation, recheck_on, cfg = got
    if generation <= seen or not recheck_on:
        return None
    return generation, cfg
