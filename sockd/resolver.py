"""Host names to addresses for sockd itself, through a small cache that the
sessions and UDP associations of one serving process share.

``Resolver.resolve(requester, name, done)`` is the one way a destination's
name is resolved (a CONNECT or BIND to a name, a datagram to a name).  It
looks in the cache first, on the loop, so a hit costs no thread hop:
``done(name, addresses, error)`` runs at once.  On a miss it runs
addresses.resolve on the helper pool for names (pools.py), with the
requester's fairness and bounds, keeps the answer, then runs ``done`` on
the loop; it returns the pool's Refusal when the pool would not take the
job (``done`` is then never called).  ``addresses`` is a tuple of
(family, address text), at most addresses.MAX_ADDRESSES, in the order the
resolver prefers; on a failure it is None and ``error`` an OSError whose
``strerror`` says why.  A requester is what pools.py wants (``gone``,
``src_key``, ``client_ip``) and has ``close()``, which the loop calls when
a bug meets its ``done``.

``Cache`` is pure (no I/O, no clock: the time is handed in).  The C
library's getaddrinfo gives no time to live, so an answer is used for a
fixed ``resolve life`` and a failure for a shorter ``resolve failure-life``
(negative caching, as RFC 2308 does for DNS: a name that does not exist is
not asked again thousands of times a second).  It holds at most ``resolve
cache`` names, each at most MAX_NAME characters with at most
MAX_ADDRESSES addresses and a short reason; when full, the name stored
longest ago goes, which with one life for all is the one that would
expire first.  The settings are read from the configuration in use at
each call, so a reload that changes them applies at once; the names kept
stay, as they do not depend on the rules.  Names are kept in lower case.

With ``-d`` every hit and miss is logged at debug level.
"""

from .addresses import resolve
from .pools import NAMES

MAX_NAME = 255          # longer names are resolved, never kept (no DNS name is longer)
MAX_REASON = 200        # characters of a failure's words kept


def lookup(name):
    """Blocking (a helper thread): the addresses of ``name`` as a tuple."""
    return tuple(resolve(name, 0))


def failure(error):
    """What is kept of a failed lookup: an OSError with its errno and its
    words, cut short, and no traceback (which would hold the helper
    thread's frames)."""
    words = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return OSError(getattr(error, "errno", None), words[:MAX_REASON])


class Cache:
    """name -> (addresses or None, error or None, when stored), bounded;
    oldest first (insertion order)."""

    __slots__ = ("entries", "size", "life", "failure_life", "hits", "misses")

    def __init__(self, size=1024, life=60.0, failure_life=10.0):
        self.entries = {}
        self.size = size
        self.life = life
        self.failure_life = failure_life
        self.hits = 0
        self.misses = 0

    def configure(self, size, life, failure_life):
        """New bounds (a reload): names beyond the new size go at once, the
        oldest first; the lives apply to every name from now on."""
        self.size, self.life, self.failure_life = size, life, failure_life
        entries = self.entries
        while len(entries) > size:
            del entries[next(iter(entries))]

    def get(self, name, now):
        """(addresses, error, stored) for ``name`` (lower case) while fresh
        at ``now``, else None (a miss; a stale entry is forgotten)."""
        e = self.entries.get(name)
        if e is not None:
            if now - e[2] < (self.life if e[1] is None else self.failure_life):
                self.hits += 1
                return e
            del self.entries[name]
        self.misses += 1
        return None

    def put(self, name, addresses, error, now):
        """Keep an answer (``addresses``) or a failure (``error``) of
        ``now``, unless caching is off for it (size or life 0) or the name
        is too long."""
        life = self.life if error is None else self.failure_life
        if self.size <= 0 or life <= 0 or len(name) > MAX_NAME:
            return
        entries = self.entries
        entries.pop(name, None)
        # forget what has expired at the old end, then the oldest while full
        while entries:
            first = next(iter(entries))
            e = entries[first]
            if len(entries) < self.size and now - e[2] < (self.life if e[1] is None else self.failure_life):
                break
            del entries[first]
        entries[name] = (addresses, error, now)

    def __len__(self):
        return len(self.entries)


class Answer:
    """A miss under way on the helper pool: keeps the answer, then tells
    the requester.  The loop's error handler ends the requester when a bug
    meets it."""

    __slots__ = ("resolver", "requester", "key", "name", "done")

    def __init__(self, resolver, requester, key, name, done):
        self.resolver, self.requester, self.key, self.name, self.done = resolver, requester, key, name, done

    def deliver(self, result, error):
        if error is None and not result:
            error = OSError(None, "no address")
        if error is not None:
            if not isinstance(error, (OSError, UnicodeError, ValueError)):
                self.done(self.name, None, error)       # not the resolver's answer: not kept
                return
            error = failure(error)
            result = None
        self.resolver.cache.put(self.key, result, error, self.resolver.ctx.loop.now)
        self.done(self.name, result, error)

    def close(self):
        self.requester.close()


class Resolver:
    """The resolver of one serving process (``Context.resolver``): its
    cache and the way to the helper pool.  ``ctx`` gives the
    configuration in use, the loop and the log."""

    __slots__ = ("ctx", "cache", "config")

    def __init__(self, ctx):
        self.ctx = ctx
        self.cache = Cache()
        self.config = None

    def cached(self, name):
        """(addresses, error, stored) for ``name`` when the cache has it
        fresh, else None; logs the hit or the miss at debug level."""
        cfg = self.ctx.config
        cache = self.cache
        if cfg is not self.config:
            self.config = cfg
            cache.configure(cfg.resolve_cache, cfg.resolve_life, cfg.resolve_failure_life)
        now = self.ctx.loop.now
        got = cache.get(name.lower(), now)
        if got is None:
            self.ctx.log.debug("resolve cache: miss %s" % name)
        elif got[1] is None:
            self.ctx.log.debug("resolve cache: hit %s: %s (%.0fs old)" % (
                name, " ".join(ip for _, ip in got[0]), now - got[2]))
        else:
            self.ctx.log.debug("resolve cache: hit %s: failed, %s (%.0fs old)" % (name, got[1].strerror, now - got[2]))
        return got

    def resolve(self, requester, name, done):
        """``done(name, addresses, error)`` now from the cache, or later
        from the helper pool; returns None, or the pool's Refusal."""
        got = self.cached(name)
        if got is not None:
            done(name, got[0], got[1])
            return None
        return self.submit(requester, name, done)

    def submit(self, requester, name, done):
        """Look ``name`` up on the helper pool (after a miss), keep the
        answer, then ``done(name, addresses, error)``; returns None, or
        the pool's Refusal."""
        answer = Answer(self, requester, name.lower(), name, done)
        return self.ctx.loop.executor.submit(NAMES, requester, lookup, (name,), answer.deliver)

    def stats(self):
        """For the SIGUSR1 report."""
        c = self.cache
        return {"resolve_hits": c.hits, "resolve_misses": c.misses, "resolve_names": len(c)}
