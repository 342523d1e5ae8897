"""The metrics: what each serving process counts, how it tells the master,
what the master keeps, and the Prometheus text exposition (format 0.0.4)
that the endpoint (exporter.py) serves.  Pure: no I/O.

* A serving process counts into ``Context.counts``, a plain dict whose keys
  are tuples, ``(FAMILY, label value, ...)`` -> int (and into
  ``Context.stats``, which SIGUSR1 reports).  Counting is one dict update:
  the hot path pays nothing else.
* ``report(counts)`` is what a process has counted since it started,
  every value absolute; ``encode(pid, report)`` makes it lines of the status
  pipe, each ``M PID KEY=VALUE ...`` shorter than PIPE_BUF (so atomic), and
  ``decode`` reads one back.  A report repeats the whole count, so a
  line lost or split changes nothing that the next one does not mend.
* ``Totals`` is the master's: per live process its last report, plus the
  sum of every process that has ended.  A value there never goes down:
  each key only takes a larger value from its process, and an ended
  process's last report moves, unchanged, into the sum.  A process killed
  outright loses only what it counted since its last report.
* ``render(families)`` writes the exposition; ``Family`` is one metric.

Why not prometheus-client: its multi-process mode keeps one mmap'd file per
process in a directory (PROMETHEUS_MULTIPROC_DIR), which the workers would
need to write after dropping privileges and inside their chroot, and which
the master would have to read and merge at every scrape; a SIGKILLed
worker's file has to be cleaned up by hand.  The master here already hears
from every process on its status pipe, and the text format is a few lines
of code.
"""

import bisect
import math

# -- the families a process counts (the first item of a key in Context.counts)
SESSIONS = "s"        # ("s", command, outcome): how each session ended, once
RULE = "r"            # ("r", "FILE:LINE"): the line that decided a request
REPLY = "h"           # ("h", bucket index): accept to reply, see BUCKETS
REPLY_SUM = "hs"      # ("hs",): the seconds of those, in microseconds
IDENT = "i"           # ("i", "userid" | "error" | "unreachable")
AUTH = "a"            # ("a", method, "ok" | "failed")
LIMIT = "l"           # ("l", limit): a refusal by that limit
UDP = "u"             # ("u", "relayed" | "dropped"): datagrams
CUT = "x"             # ("x", "quota"): a relay ended because a quota with cut was reached
# ... and these from Context.stats and the live sessions (report())
ACCEPTED = "c"        # ("c",)
ERRORS = "e"          # ("e",)
BYTES = "b"           # ("b", "in" | "out")

COMMANDS = ("connect", "bind", "udp")
OUTCOMES = ("connected", "refused", "failed", "timed_out")
METHODS = ("none", "username", "gssapi")
LIMITS = ("clients", "per-address", "rate", "binds", "helpers", "quota")
IDENTS = ("userid", "error", "unreachable")

# upper bounds of the reply histogram's buckets, in seconds (+Inf follows)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

LINE_MAX = 4000       # bytes of one status pipe line (PIPE_BUF is 4096)
KEY_MAX = 1000        # a longer key (a rule in a file of a very long name) is not reported
ESCAPES = {"%": "%25", " ": "%20", "\n": "%0A", "=": "%3D", "|": "%7C"}


def bump(counts, key, n=1):
    """``counts[key] += n``, the key new or not."""
    counts[key] = counts.get(key, 0) + n


def bucket(seconds):
    """The index in BUCKETS of the first bound at or above ``seconds``
    (len(BUCKETS): +Inf)."""
    return bisect.bisect_left(BUCKETS, seconds)


def observe_reply(counts, seconds):
    """One reply, ``seconds`` after the accept, into the histogram."""
    i = bucket(seconds)
    key = (REPLY, i)
    counts[key] = counts.get(key, 0) + 1
    counts[(REPLY_SUM,)] = counts.get((REPLY_SUM,), 0) + int(seconds * 1e6)


# --- the report on the status pipe -------------------------------------------------------------

def report(counts, stats, live=()):
    """A process's whole count: ``counts`` (Context.counts), the totals of
    ``stats`` (Context.stats: accepted, errors, bytes of the sessions that
    have ended) and ``live``: (bytes in, bytes out, datagrams relayed,
    dropped) of the sessions still open.  Returns {key: int}."""
    out = dict(counts)
    b_in, b_out, d_ok, d_drop = live or (0, 0, 0, 0)
    out[(ACCEPTED,)] = stats["accepted"]
    out[(ERRORS,)] = stats["errors"]
    out[(BYTES, "in")] = stats["bytes_in"] + b_in
    out[(BYTES, "out")] = stats["bytes_out"] + b_out
    if d_ok:
        out[(UDP, "relayed")] = out.get((UDP, "relayed"), 0) + d_ok
    if d_drop:
        out[(UDP, "dropped")] = out.get((UDP, "dropped"), 0) + d_drop
    return out


def escape(text):
    return "".join(ESCAPES.get(c, c) for c in text)


def unescape(text):
    if "%" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "%" and i + 3 <= len(text):
            try:
                out.append(chr(int(text[i + 1:i + 3], 16)))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


def encode(pid, counts):
    """The status pipe lines (bytes, each ending in a newline and at most
    LINE_MAX long) that carry ``counts`` ({key tuple: int}) for process
    ``pid``."""
    head = "M %d" % pid
    lines, cur, size = [], [head], len(head)
    for key, value in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0]))):
        item = "%s=%d" % ("|".join(escape(str(part)) for part in key), value)
        if len(item) > KEY_MAX:
            continue
        if size + 1 + len(item) + 1 > LINE_MAX:
            lines.append(" ".join(cur) + "\n")
            cur, size = [head], len(head)
        cur.append(item)
        size += 1 + len(item)
    if len(cur) > 1 or not lines:
        lines.append(" ".join(cur) + "\n")
    return [line.encode("utf-8") for line in lines]


def decode(fields):
    """The items of one ``M`` line after its pid (``fields``: the line's
    words as bytes): {key tuple: int}.  A word that does not parse is left
    out; a bucket index is an int again."""
    out = {}
    for word in fields:
        key, sep, value = word.decode("utf-8", "replace").rpartition("=")
        if not sep:
            continue
        try:
            n = int(value)
        except ValueError:
            continue
        parts = tuple(unescape(p) for p in key.split("|"))
        if parts[0] == REPLY and len(parts) == 2:
            try:
                parts = (REPLY, int(parts[1]))
            except ValueError:
                continue
        out[parts] = n
    return out


class Totals:
    """The master's counts of every process it has started: the last
    report of each live one (``last``), and the sum of those that have
    ended (``done``).  Never goes down (see the module docstring)."""

    def __init__(self):
        self.last = {}       # pid -> {key: int}
        self.done = {}       # key -> int

    def update(self, pid, counts):
        """Process ``pid`` reports ``counts`` (absolute values)."""
        mine = self.last.setdefault(pid, {})
        for key, value in counts.items():
            if value > mine.get(key, 0):
                mine[key] = value

    def ended(self, pid):
        """Process ``pid`` has ended: its last report joins the sum."""
        mine = self.last.pop(pid, None)
        if mine:
            done = self.done
            for key, value in mine.items():
                done[key] = done.get(key, 0) + value

    def snapshot(self):
        """{key: int}: every process's count, added up."""
        out = dict(self.done)
        for mine in self.last.values():
            for key, value in mine.items():
                out[key] = out.get(key, 0) + value
        return out


# --- the exposition -------------------------------------------------------------------------

class Family:
    """One metric: its name, type (counter, gauge, histogram), help text,
    and its samples: (name suffix, ((label, value), ...), number)."""

    __slots__ = ("name", "type", "help", "samples")

    def __init__(self, name, type_, help_, samples=()):
        self.name, self.type, self.help = name, type_, help_
        self.samples = list(samples)

    def add(self, labels, value, suffix=""):
        self.samples.append((suffix, tuple(labels), value))
        return self


def label_value(text):
    """A label value as the text format writes it between double quotes."""
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def help_text(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(v):
    """A sample value: an int as it is, a float in Go's spellings of the
    special values."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(families):
    """The text exposition format (version 0.0.4) of ``families``: for
    each, its HELP and TYPE lines, then one line per sample."""
    out = []
    for f in families:
        out.append("# HELP %s %s\n" % (f.name, help_text(f.help)))
        out.append("# TYPE %s %s\n" % (f.name, f.type))
        for suffix, labels, value in f.samples:
            if labels:
                text = ",".join('%s="%s"' % (k, label_value(v)) for k, v in labels)
                out.append("%s%s{%s} %s\n" % (f.name, suffix, text, number(value)))
            else:
                out.append("%s%s %s\n" % (f.name, suffix, number(value)))
    return "".join(out)


def le_text(bound):
    """A bucket's bound as its ``le`` label: 0.005, 1, +Inf."""
    if bound == math.inf:
        return "+Inf"
    return str(int(bound)) if bound == int(bound) else repr(bound)


def histogram(name, help_, counts, labels=()):
    """A histogram Family from the non-cumulative bucket counts ``counts``
    ({index: n}, index len(BUCKETS) for +Inf) and the sum in microseconds
    at key None."""
    f = Family(name, "histogram", help_)
    total = 0
    for i, bound in enumerate(BUCKETS + (math.inf,)):
        total += counts.get(i, 0)
        f.add(tuple(labels) + (("le", le_text(bound)),), total, "_bucket")
    f.add(labels, counts.get(None, 0) / 1e6, "_sum")
    f.add(labels, total, "_count")
    return f


def families(totals, server):
    """Every Family of the exposition: the processes' ``totals`` (a
    Totals.snapshot()) and what only the master knows, ``server``, a dict:
    counts (Master.counts), active ([(model, worker, generation, n)]),
    workers, generation, started (seconds since the epoch), upstreams
    ([(label, up, failures in a row)]), quotas ([(key, period, bytes used,
    bytes allowed, FILE:LINE)]), refused (scrapes refused)."""
    t = totals
    fs = []
    f = Family("sockd_connections_accepted_total", "counter", "Client connections accepted.")
    fs.append(f.add((), t.get((ACCEPTED,), 0)))
    f = Family("sockd_sessions_total", "counter",
               "Sessions by SOCKS command and how they ended: connected, refused, failed, timed_out, "
               "error (a protocol error), closed (the client left before an answer); command none: "
               "before any request.")
    seen = {k for k in t if k[0] == SESSIONS}
    keys = [(SESSIONS, c, o) for c in COMMANDS for o in OUTCOMES]
    keys += sorted(seen - set(keys))
    for k in keys:
        f.add((("command", k[1]), ("outcome", k[2])), t.get(k, 0))
    fs.append(f)
    f = Family("sockd_sessions_active", "gauge", "Sessions open now, by process model and worker.")
    for model, worker, generation, n in server.get("active", ()):
        f.add((("model", model), ("worker", worker), ("generation", generation)), n)
    fs.append(f)
    f = Family("sockd_bytes_total", "counter",
               "Bytes relayed: in, from clients (on to their destinations); out, to clients.")
    for d in ("in", "out"):
        f.add((("direction", d),), t.get((BYTES, d), 0))
    fs.append(f)
    f = Family("sockd_rule_hits_total", "counter",
               "Requests decided by each rule (sockd.conf) or way-out line (upstream file), as FILE:LINE.")
    for k in sorted(k for k in t if k[0] == RULE):
        f.add((("rule", k[1]),), t[k])
    fs.append(f)
    hist = {k[1]: v for k, v in t.items() if k[0] == REPLY}
    hist[None] = t.get((REPLY_SUM,), 0)
    fs.append(histogram("sockd_reply_seconds", "Seconds from a client's accept to the reply to its request.",
                        hist))
    f = Family("sockd_ident_total", "counter", "identd lookups by outcome: userid, error, unreachable.")
    for o in IDENTS:
        f.add((("outcome", o),), t.get((IDENT, o), 0))
    fs.append(f)
    f = Family("sockd_auth_total", "counter", "SOCKS 5 authentications by method and outcome (ok, failed).")
    for m in METHODS:
        for o in ("ok", "failed"):
            f.add((("method", m), ("outcome", o)), t.get((AUTH, m, o), 0))
    fs.append(f)
    f = Family("sockd_limit_refusals_total", "counter",
               "Clients refused by a limit: limit clients, per-address, rate, binds; helpers: a helper pool's "
               "queue for the client's address was full; quota: a quota was reached.")
    for lim in LIMITS:
        f.add((("limit", lim),), t.get((LIMIT, lim), 0))
    fs.append(f)
    f = Family("sockd_sessions_cut_total", "counter",
               "Relays ended before either side closed: quota, a quota with cut was reached.")
    fs.append(f.add((("reason", "quota"),), t.get((CUT, "quota"), 0)))
    f = Family("sockd_udp_datagrams_total", "counter", "UDP datagrams relayed (both ways) and dropped.")
    for o in ("relayed", "dropped"):
        f.add((("outcome", o),), t.get((UDP, o), 0))
    fs.append(f)
    f = Family("sockd_errors_total", "counter", "Protocol errors of clients and relay errors.")
    fs.append(f.add((), t.get((ERRORS,), 0)))
    c = server.get("counts", {})
    for name, key, help_ in (
            ("sockd_workers_started_total", "workers started", "Worker processes started (threads model)."),
            ("sockd_workers_died_total", "workers died",
             "Worker processes that ended while their generation served (they are replaced)."),
            ("sockd_children_started_total", "clients", "Child processes forked for clients (fork model)."),
            ("sockd_reloads_total", "reloads", "Reloads (SIGHUP) committed."),
            ("sockd_reloads_failed_total", "failed reloads", "Reloads that failed; the previous configuration serves.")):
        fs.append(Family(name, "counter", help_).add((), c.get(key, 0)))
    fs.append(Family("sockd_workers", "gauge", "Worker processes running now (every generation).").add(
        (), server.get("workers", 0)))
    fs.append(Family("sockd_generation", "gauge", "The configuration generation new clients get (1 at start, "
                     "one more per reload).").add((), server.get("generation", 1)))
    fs.append(Family("sockd_start_time_seconds", "gauge", "When the master started, in seconds since the epoch.").add(
        (), float(server.get("started", 0.0))))
    f = Family("sockd_upstream_up", "gauge",
               "Upstream proxies of the way-out file: 1 when up, 0 while marked down after a failure.")
    g = Family("sockd_upstream_failures", "gauge",
               "Failures in a row of an upstream proxy marked down (0 when up).")
    for label, up, k in server.get("upstreams", ()):
        f.add((("upstream", label),), 1 if up else 0)
        g.add((("upstream", label),), k)
    fs += [f, g]
    f = Family("sockd_quota_used_bytes", "gauge",
               "Bytes used this period by each key under a quota (address, user, rule), as the shared "
               "traffic table holds them; quota: the line, as FILE:LINE.")
    g = Family("sockd_quota_limit_bytes", "gauge", "The bytes a quota allows its key per period.")
    for key, period, used, limit, where in server.get("quotas", ()):
        labels = (("key", key), ("period", period), ("quota", where))
        f.add(labels, used)
        g.add(labels, limit)
    fs += [f, g]
    fs.append(Family("sockd_metrics_refused_total", "counter",
                     "Connections to the metrics endpoint refused: not in its access list, too many at once.").add(
        (), server.get("refused", 0)))
    return fs
