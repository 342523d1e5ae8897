"""The helper threads of a serving process: the steps that block the poll
loop (host-name lookups, bcrypt password checks) run here, and no client
can stall them for the others.

A worker has one pool per kind of work (``NAMES``, ``PASSWORDS``), so that
a flood of one kind never delays the other: bcrypt is slow on purpose,
and a lookup may hang for as long as the resolver's timeouts.  Each pool
has a fixed number of threads, started as work arrives, and keeps:

* one queue per client address (an IPv6 client's /64, which one host
  commonly holds whole), served in turn: a flood from one address delays
  that address's jobs, not another's;
* a bound on the jobs of one address running at once (``per_address``,
  never the whole pool): a lookup that hangs cannot be interrupted, so a
  thread stuck in one is held by its own address, and the other
  addresses always find a thread;
* a bound on the jobs of one address waiting (``queued``) and on the
  jobs of one requester waiting or running (PER_REQUESTER: a session has
  one at a time, a UDP association a couple); beyond them a job is
  refused at once and the caller answers its client with a failure;
* each job's requester: a job whose requester has gone when its turn
  comes is dropped, never run, and counted.

A requester is an object with ``gone`` (true once it has closed: its
answers are of no use any more), ``src_key`` (its client's address, as
rules.ip_key gives it) and ``client_ip`` (the same as text, for the log).

``submit(kind, requester, fn, args, done)`` returns None when the job is
taken (``done(result, error)`` then runs on the loop, later; not at all
when the job is dropped), or a Refusal: its text for the log line, and
whether to log it (at most once every LOG_EVERY seconds per address and
pool).  ``stats()`` gives the counts of dropped and refused jobs for the
SIGUSR1 report.

In a process that serves one client (a fork-model child, inetd) nobody
else can be stalled: ``InlineExecutor`` runs each job at once, in the
loop's thread.

Imports nothing of sockd: the loop hands itself in (``call_soon_threadsafe``
and ``now`` are all that is used of it).
"""

import collections
import threading
import time

NAMES, PASSWORDS = "names", "passwords"
WORK = {NAMES: "name lookups", PASSWORDS: "password checks"}
PER_REQUESTER = 2           # jobs of one session or association waiting or running
LOG_EVERY = 5.0             # seconds between refusals logged for one address
MAX_LOGGED = 4096           # addresses remembered for that (then forgotten all at once)


class Refusal:
    """Why a pool would not take a job: ``text`` for the caller's log line,
    ``log_it`` whether to write that line now."""

    __slots__ = ("text", "log_it")

    def __init__(self, text, log_it):
        self.text, self.log_it = text, log_it

    def __repr__(self):
        return "Refusal(%r, %r)" % (self.text, self.log_it)


def address_of(src_key):
    """The address a job is queued and bounded by: IPv4 as it is, IPv6 by
    its /64."""
    fam, n = src_key
    return src_key if fam == 4 else (fam, n >> 64)


class Job:
    __slots__ = ("requester", "address", "fn", "args", "done")

    def __init__(self, requester, address, fn, args, done):
        self.requester, self.address, self.fn, self.args, self.done = requester, address, fn, args, done


class Pool:
    """``size`` threads for one kind of work, shared fairly among the
    client addresses.  ``submit`` runs in the loop's thread; everything
    else happens under ``cond``'s lock, in the pool's threads too."""

    def __init__(self, loop, kind, size, per_address=4, queued=64):
        self.loop = loop
        self.kind = kind
        self.size = max(1, size)
        # never the whole pool: another address always finds a thread
        self.per_address = max(1, min(per_address, self.size - 1))
        self.queued = max(1, queued)
        self.cond = threading.Condition(threading.Lock())
        self.waiting = {}                  # address -> deque of its Jobs waiting
        self.turns = collections.deque()   # addresses with a job waiting and below per_address, in turn
        self.running = {}                  # address -> its jobs running
        self.held = {}                     # requester -> its jobs waiting or running
        self.threads = []
        self.idle = 0                      # threads waiting for work that nobody has woken yet
        self.stopping = False
        self.dropped = 0                   # jobs whose requester had gone before their turn
        self.refused = 0                   # jobs over a bound, refused at submit
        self.logged = {}                   # address -> when a refusal of it was last logged

    def submit(self, requester, fn, args, done):
        address = address_of(requester.src_key)
        with self.cond:
            held = self.held.get(requester, 0)
            if held >= PER_REQUESTER:
                return self.refuse(address, "%d %s already under way for this client" % (held, WORK[self.kind]))
            q = self.waiting.get(address)
            if q is None:
                q = self.waiting[address] = collections.deque()
                if self.running.get(address, 0) < self.per_address:
                    self.turns.append(address)
            elif len(q) >= self.queued:
                return self.refuse(address, "too many %s waiting from %s (helpers queue %d)" % (
                    WORK[self.kind], requester.client_ip, self.queued))
            q.append(Job(requester, address, fn, args, done))
            self.held[requester] = held + 1
            if self.turns:
                # work that may run now: a thread for it
                if self.idle:
                    self.idle -= 1
                    self.cond.notify()
                elif len(self.threads) < self.size:
                    t = threading.Thread(target=self.work, name="sockd-" + self.kind, daemon=True)
                    self.threads.append(t)
                    t.start()
        return None

    def refuse(self, address, text):
        """Count a refusal; log it unless this address's last was logged
        less than LOG_EVERY seconds ago (called with the lock held)."""
        self.refused += 1
        now = time.monotonic()
        last = self.logged.get(address)
        log_it = last is None or now - last >= LOG_EVERY
        if log_it:
            if len(self.logged) >= MAX_LOGGED:
                self.logged.clear()
            self.logged[address] = now
        return Refusal("%s; logged at most once every %g seconds" % (text, LOG_EVERY), log_it)

    def take(self):
        """The next job to run, the addresses served in turn; jobs of
        requesters that have gone are dropped on the way.  None when no job
        may run now.  (Lock held.)"""
        turns = self.turns
        while turns:
            address = turns.popleft()
            q = self.waiting[address]
            job = q.popleft()
            if not q:
                del self.waiting[address]
            if job.requester.gone:
                self.dropped += 1
                self.release(job.requester)
                if q:
                    turns.appendleft(address)     # a dropped job used no turn
                continue
            n = self.running.get(address, 0) + 1
            self.running[address] = n
            if q and n < self.per_address:
                turns.append(address)
            return job
        return None

    def release(self, requester):
        n = self.held[requester] - 1
        if n:
            self.held[requester] = n
        else:
            del self.held[requester]

    def finished(self, job):
        """A job has run: its address may take its turn again.  (Lock held.)"""
        address = job.address
        n = self.running[address] - 1
        if n:
            self.running[address] = n
        else:
            del self.running[address]
        if n == self.per_address - 1 and address in self.waiting:
            self.turns.append(address)            # it was at its bound, with jobs waiting
        self.release(job.requester)

    def work(self):
        cond = self.cond
        call = self.loop.call_soon_threadsafe
        with cond:
            while True:
                job = self.take()
                if job is None:
                    if self.stopping:
                        return
                    self.idle += 1
                    cond.wait()
                    continue
                cond.release()
                try:
                    try:
                        result, error = job.fn(*job.args), None
                    except Exception as exc:      # handed to the caller, who decides
                        result, error = None, exc
                finally:
                    cond.acquire()
                # counted free before the answer goes out: ``done`` may submit again
                self.finished(job)
                call(job.done, result, error)

    def shutdown(self):
        with self.cond:
            self.stopping = True
            self.idle = 0
            self.cond.notify_all()


class ThreadExecutor:
    """The helper threads of a worker: a pool for name lookups and one for
    password checks (see the module's docstring)."""

    def __init__(self, loop, names=16, passwords=4, per_address=4, queued=64):
        self.pools = {NAMES: Pool(loop, NAMES, names, per_address, queued),
                      PASSWORDS: Pool(loop, PASSWORDS, passwords, per_address, queued)}

    def submit(self, kind, requester, fn, args, done):
        return self.pools[kind].submit(requester, fn, args, done)

    def stats(self):
        """Jobs dropped (their requester had gone) and refused (over a
        bound) since the start, per pool: for the SIGUSR1 report."""
        out = {}
        for kind, pool in self.pools.items():
            with pool.cond:
                out["%s_dropped" % kind] = pool.dropped
                out["%s_refused" % kind] = pool.refused
        return out

    def shutdown(self):
        for pool in self.pools.values():
            pool.shutdown()


class InlineExecutor:
    """Runs blocking work at once, in the loop's thread: for processes that
    serve a single client (fork-model children, inetd), where it stalls
    nobody else."""

    def __init__(self, loop):
        self.loop = loop

    def submit(self, kind, requester, fn, args, done):
        try:
            result, error = fn(*args), None
        except Exception as exc:      # handed to the caller, who decides
            result, error = None, exc
        self.loop.now = time.monotonic()
        done(result, error)
        return None

    def stats(self):
        return {}

    def shutdown(self):
        pass
