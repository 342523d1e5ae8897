"""A parsed configuration as JSON: the "frozen" configuration of inetd mode,
and the form in which the master hands a new configuration to the
processes it forked before a reload (``reload recheck``).

Why: under inetd every client starts a new sockd, which would parse the
whole file again; the classic package had "frozen" .fc files for the same
reason.  A 10,000-line file takes about 0.2 s to parse (address parsing
dominates) and much less to decode.

Safety: this is JSON, never pickle.  Decoding builds only classes defined in
the sockd package, either by calling their constructor with the stored
constructor arguments or by setting the stored attributes on a bare
instance; it never calls anything named by the data.  A cache file is only
read when it and its directory belong to root or to us and nobody else can
write them, and it is written mode 0600 (a passwd file's hashes may be in
it).  It is used only when every file the parse opened (the configuration,
its userfiles, the passwd file, ...) still has the same SHA-256, and when
the sockd code is the same as when it was written; anything else is a miss
and the file is parsed as usual.  What a parse learns without opening a
file through Python (a service name from /etc/services, a user from the
passwd database) is not tracked.

Nothing here runs on a connection's path.
"""

import base64
import hashlib
import importlib
import json
import math
import os
import stat as S
import sys

from . import __version__, extras

FORMAT = "sockd-config/1"
DEFAULT_DIR = "/var/cache/sockd"
ENV_DIR = "SOCKD_CACHE_DIR"


class Uncacheable(Exception):
    """The object graph holds something this codec cannot rebuild faithfully."""


# --- the codec --------------------------------------------------------------------------

_CTOR = {}       # class -> tuple of constructor parameter names, or None


CO_VARARGS, CO_VARKEYWORDS = 0x04, 0x08     # inspect's code flags (*args, **kwargs)


def _ctor_params(cls):
    """The names of the parameters of ``cls``'s constructor after self, or
    None (no constructor of its own, one in C, or one taking *args or
    **kwargs).  Read from its code object, as inspect.signature would give
    them: not inspect itself, which brings dis and ast, some 1.2 MB in the
    master that every fork-model client pays for (docs/performance.md
    section 3)."""
    if cls not in _CTOR:
        params = None
        init = cls.__init__
        code = getattr(init, "__code__", None) if init is not object.__init__ else None
        if code is not None and not code.co_flags & (CO_VARARGS | CO_VARKEYWORDS):
            params = tuple(code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount])
        _CTOR[cls] = params
    return _CTOR[cls]


def _attr_names(obj):
    names = []
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for n in slots:
            if n not in ("__weakref__", "__dict__") and n not in names:
                names.append(n)
    d = getattr(obj, "__dict__", None)
    if d:
        names.extend(n for n in d if n not in names)
    return names


class Encoder:
    """Turns an object graph into plain JSON values.  Objects are instances
    of sockd classes; one seen twice is stored once and referenced."""

    def __init__(self):
        self.classes = []         # [module, qualname, [attrs], ctor params or None]
        self.class_index = {}
        self.objects = {}         # id -> index
        self.keep = []            # keeps ids valid while encoding
        self.count = 0

    def value(self, v):
        if v is None or v is True or v is False or type(v) in (int, str):
            return v
        t = type(v)
        if t is float:
            if math.isfinite(v):
                return v
            return {"n": repr(v)}
        if t is list:
            return [self.value(x) for x in v]
        if t is tuple:
            return {"t": [self.value(x) for x in v]}
        if t is dict:
            return {"d": [[self.value(k), self.value(x)] for k, x in v.items()]}
        if t in (set, frozenset):
            items = sorted((self.value(x) for x in v), key=lambda e: json.dumps(e, sort_keys=True))
            return {"s" if t is set else "f": items}
        if t is bytes:
            return {"b": base64.b64encode(v).decode("ascii")}
        return self.obj(v)

    def obj(self, o):
        cls = type(o)
        mod = getattr(cls, "__module__", "") or ""
        if not (mod == "sockd" or mod.startswith("sockd.")) or callable(o) \
                or "<locals>" in cls.__qualname__:
            raise Uncacheable("cannot store a %s.%s" % (mod, cls.__qualname__))
        idx = self.objects.get(id(o))
        if idx is not None:
            return {"r": idx}
        params = _ctor_params(cls)
        names = _attr_names(o)
        if params is not None and not all(p in names for p in params):
            params = None
        if params is not None:          # constructor arguments first, in order
            names = list(params) + [n for n in names if n not in params]
        stored, values = [], []
        for n in names:
            try:
                raw = getattr(o, n)
            except AttributeError:
                if params is not None and n in params:
                    raise Uncacheable("%s has no attribute %s" % (cls.__qualname__, n)) from None
                continue
            if params is not None and n.startswith("_") and n not in params:
                continue                    # derived by the constructor
            try:
                values.append(self.value(raw))
            except Uncacheable:
                if params is not None and n not in params:
                    continue                # e.g. a lock the constructor makes anew
                raise
            stored.append(n)
        key = (cls, tuple(stored), params)
        ci = self.class_index.get(key)
        if ci is None:
            ci = len(self.classes)
            self.classes.append([mod, cls.__qualname__, stored, list(params) if params is not None else None])
            self.class_index[key] = ci
        # indexes are given in the order objects are finished, which is the
        # order the decoder finishes them in: no need to store them
        self.objects[id(o)] = self.count
        self.count += 1
        self.keep.append(o)
        values.insert(0, ci)
        return {"o": values}


class Decoder:
    """Rebuilds the graph.  The JSON parser calls ``hook`` on every JSON
    object as it closes, children before parents, which is the order the
    encoder numbered the objects in."""

    def __init__(self, classes):
        self.classes = []
        for entry in classes:
            mod, qual, attrs, params = entry
            if not isinstance(mod, str) or not (mod == "sockd" or mod.startswith("sockd.")):
                raise ValueError("class outside sockd: %r" % (mod,))
            module = importlib.import_module(mod)
            cls = module
            for part in qual.split("."):
                cls = getattr(cls, part)
            if not isinstance(cls, type) or cls.__module__ != mod:
                raise ValueError("not a sockd class: %s.%s" % (mod, qual))
            if not all(isinstance(a, str) and a.isidentifier() for a in attrs):
                raise ValueError("bad attribute name")
            if params is not None:
                if tuple(params) != _ctor_params(cls) or list(attrs[:len(params)]) != list(params):
                    raise ValueError("constructor of %s changed" % qual)
                self.classes.append((cls, len(attrs), len(params), attrs[len(params):]))
            else:
                self.classes.append((cls, len(attrs), None, attrs))
        self.objects = []

    def hook(self, d):
        if len(d) != 1:
            raise ValueError("bad value")
        (tag, body), = d.items()
        if tag == "o":
            cls, nattrs, nparams, rest = self.classes[body[0]]
            if len(body) != nattrs + 1:
                raise ValueError("bad object")
            if nparams is not None:
                o = cls(*body[1:nparams + 1])
                if rest:
                    for name, x in zip(rest, body[nparams + 1:]):
                        setattr(o, name, x)
            else:
                o = cls.__new__(cls)
                for name, x in zip(rest, body[1:]):
                    setattr(o, name, x)
            self.objects.append(o)
            return o
        if tag == "t":
            return tuple(body)
        if tag == "d":
            return {k: x for k, x in body}
        if tag == "s":
            return set(body)
        if tag == "f":
            return frozenset(body)
        if tag == "b":
            return base64.b64decode(body.encode("ascii"), validate=True)
        if tag == "n":
            if body not in ("inf", "-inf", "nan"):
                raise ValueError("bad number")
            return float(body)
        if tag == "r":
            if type(body) is not int or not 0 <= body < len(self.objects):
                raise ValueError("bad reference")
            return self.objects[body]
        raise ValueError("bad tag %r" % (tag,))


def encode(obj):
    """The JSON text (bytes) of an object graph: a line with the class
    table, then the data.  Raises Uncacheable."""
    e = Encoder()
    data = e.value(obj)
    return (json.dumps(e.classes, separators=(",", ":")) + "\n" +
            json.dumps(data, separators=(",", ":"))).encode()


def decode(blob):
    """The object graph back.  Raises ValueError (and its kin) on bad data."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        blob = bytes(blob).decode("utf-8")
    head, _, body = blob.partition("\n")
    d = Decoder(json.loads(head))
    return json.loads(body, object_hook=d.hook)


def encode_checked(obj):
    """encode(), refusing what does not survive a round trip unchanged."""
    blob = encode(obj)
    if encode(decode(blob)) != blob:
        raise Uncacheable("the configuration does not survive a round trip")
    return blob


# --- which files a parse reads --------------------------------------------------------------

_recording = None
_hooked = False


def _audit(event, args):
    rec = _recording
    if rec is None:
        return
    if event == "open":
        path = args[0]
    elif event in ("os.listdir", "os.scandir"):
        path = args[0] if args else "."
    else:
        return
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and path:
        rec.append(os.path.abspath(path))


class Recording:
    """``with Recording() as files:`` lists every path opened (or listed)
    through Python inside the block.  Uses an audit hook, installed on first
    use and silent outside a recording: only short-lived processes (inetd
    mode, -V) record."""

    def __enter__(self):
        global _recording, _hooked
        if not _hooked:
            sys.addaudithook(_audit)
            _hooked = True
        self.files = []
        _recording = self.files
        return self.files

    def __exit__(self, *exc):
        global _recording
        _recording = None
        return False


def _is_code(path):
    if path.endswith((".py", ".pyc", ".so", ".pth")) or "__pycache__" in path:
        return True
    if path.startswith(("/proc/", "/sys/", "/dev/")):
        return True
    # a package's directory, listed by an import in the block (extras.load_for)
    return os.path.isfile(os.path.join(path, "__init__.py"))


def fingerprint_file(path):
    """sha256 hex of a regular file's content, or None when it cannot be
    read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if S.S_ISDIR(st.st_mode):
            return "dir:" + hashlib.sha256("\0".join(sorted(os.listdir(path))).encode("utf-8", "replace")
                                           ).hexdigest()
        if not S.S_ISREG(st.st_mode):
            return None
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def code_signature():
    """Changes when any module of the sockd package changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256(__version__.encode())
    for dirpath, dirnames, filenames in os.walk(here):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                st = os.stat(os.path.join(dirpath, f))
                h.update(("%s/%s %d %d\n" % (dirpath, f, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


# --- the cache file -------------------------------------------------------------------------

def cache_dir():
    """The directory from SOCKD_CACHE_DIR (empty: no cache), default
    /var/cache/sockd."""
    d = os.environ.get(ENV_DIR)
    if d is None:
        return DEFAULT_DIR
    return d or None


def cache_path(config_path, directory=None):
    directory = directory or cache_dir()
    if not directory:
        return None
    key = hashlib.sha256(os.path.abspath(config_path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(directory, "%s.json" % key)


def can_store(config_path, directory=None):
    """Could store() write here (checked before forking a writer)?"""
    path = cache_path(config_path, directory)
    if path is None:
        return False
    d = os.path.dirname(path)
    if os.path.isdir(d):
        return os.access(d, os.W_OK | os.X_OK)
    return os.access(os.path.dirname(d) or "/", os.W_OK | os.X_OK)


def _trusted(st):
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def load(config_path, directory=None):
    """The cached Config for ``config_path``, or None (a miss, whatever the
    reason).  Never raises for a bad or foreign cache file."""
    path = cache_path(config_path, directory)
    if path is None:
        return None
    try:
        dst = os.lstat(os.path.dirname(path))
        if not S.S_ISDIR(dst.st_mode) or not _trusted(dst):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not S.S_ISREG(st.st_mode) or not _trusted(st):
                return None
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        nl = b"".join(chunks)
        head_end = nl.index(b"\n")
        head = json.loads(nl[:head_end])
        if head.get("format") != FORMAT or head.get("sockd") != __version__ \
                or head.get("config") != os.path.abspath(config_path) or head.get("code") != code_signature():
            return None
        for dep, digest in head["deps"]:
            if fingerprint_file(dep) != digest:
                return None
        body = nl[head_end + 1:]
        if hashlib.sha256(body).hexdigest() != head.get("sha256"):
            return None
        cfg = decode(body)
        extras.load_for(cfg)        # as configload.load does
        return cfg
    except Exception:                # a miss: the caller parses the file
        return None


def store(config_path, cfg, files, directory=None):
    """Write the cache for ``cfg``, parsed from ``config_path`` while
    ``files`` were opened.  Returns the cache path, or None when nothing was
    written (no cache directory, not writable, not cacheable)."""
    path = cache_path(config_path, directory)
    if path is None:
        return None
    try:
        blob = encode_checked(cfg)
    except (Uncacheable, ValueError, TypeError, RecursionError):
        return None
    deps, seen = [], set()
    cache_d = os.path.dirname(path)
    for f in [os.path.abspath(config_path)] + list(files):
        if f in seen or _is_code(f) or f.startswith(cache_d + os.sep):
            continue
        seen.add(f)
        deps.append([f, fingerprint_file(f)])
    head = {"format": FORMAT, "sockd": __version__, "config": os.path.abspath(config_path),
            "code": code_signature(), "deps": deps, "sha256": hashlib.sha256(blob).hexdigest()}
    data = json.dumps(head, separators=(",", ":")).encode() + b"\n" + blob
    d = os.path.dirname(path)
    try:
        if not os.path.isdir(d):
            os.mkdir(d, 0o700)
        # tempfile.mkstemp's open; not tempfile itself, which brings the
        # random module, whose at-fork hook re-seeds in every fork-model
        # child (docs/performance.md section 3)
        tmp = os.path.join(d, ".tmp-" + os.urandom(8).hex())
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
        os.replace(tmp, path)
        prune(d)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return path


def prune(directory):
    """Remove the cache files of configuration files that are gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.endswith(".json"):
            continue
        f = os.path.join(directory, name)
        try:
            with open(f, "rb") as fh:
                head = json.loads(fh.readline())
            if not os.path.exists(head["config"]):
                os.unlink(f)
        except (OSError, ValueError, KeyError, TypeError):
            continue
