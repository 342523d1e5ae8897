"""The edge of the configuration: everything reading sockd.conf needs from
outside its text.

``load(path)`` reads the file, runs the pure parser's steps (config.py)
and, between them, does what the parser may not: asks the system whether
``user`` and ``group`` exist and ``chroot`` is a directory, reads the
``passwd`` file (passwd.PasswdFile) and the ``route`` file (route.load), the
userfiles that ``*=`` lists name, and -- unless ``deny-private-destinations
no`` -- the host's own addresses (netinfo).  Each problem reads
``FILE:LINE: message (near 'token')`` with the line of the directive that
named it; a problem inside a referenced file keeps that file's own
FILE:LINE.  The problems come in the order the parser has always given:
the lines' in line order (the system checks among them), then those of
the referenced files.

The cli, the tools and the server call this; the client library never does
(it must not pull in the passwd code and bcrypt).  What the configuration
uses of gssapi and bcrypt is loaded here (extras.load_for).
"""

import grp
import os
import pwd
import stat

from . import config as C
from . import extras
from . import gss
from . import netinfo
from . import passwd as PW
from . import route
from . import wayout
from .errors import Bad, ConfigError
from .settings import SETTINGS


def load(path, keep=False):
    """Read and parse the configuration at ``path`` and what it names.
    Returns a Config; raises ConfigError with every problem.  Blocks on the
    file system and the passwd and group databases.  ``keep``: the caller
    (the server) keeps the Config for as long as it runs; its objects are
    frozen out of the collector's sight (config.without_gc)."""
    return C.without_gc(parse_and_read, path, keep)


def parse_and_read(path):
    """load() with the collector as it finds it."""
    cfg, problems = C.read_lines(read_text(path), path)
    problems = sorted(problems + check_system(cfg), key=lambda p: p[1])    # stable: line order
    if not problems:
        problems = C.check_together(cfg) + check_gssapi(cfg) + load_passwd(cfg) + load_route(cfg) + \
            load_wayout(cfg)
    if problems:
        raise ConfigError(problems)
    read_userfiles(cfg)
    extras.load_for(cfg)
    C.finish(cfg)
    if cfg.deny_private_destinations != "no":
        cfg.own_addresses = netinfo.local_addresses()
    return cfg


def read_text(path):
    """The text of the configuration file (at most 16 MiB, undecodable bytes
    replaced).  Raises ConfigError ``PATH:0: cannot read: ...``."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 24)
    except OSError as exc:
        raise ConfigError([(path, 0, "cannot read: %s" % exc.strerror)]) from None
    return data.decode("utf-8", "replace")


def check_system(cfg):
    """Run the settings' system checks (``Setting.check``) on the values the
    file gave, keeping what they return.  Returns the problems, each on the
    line of its directive."""
    problems = []
    for s in SETTINGS:
        if s.check is None or s.key not in cfg.line_of:
            continue
        try:
            setattr(cfg, s.attr, s.check(cfg.get(s.key)))
        except Bad as exc:
            problems.append(C.located(cfg.path, cfg.line_of[s.key], str(exc), exc.token))
    return problems


def check_gssapi(cfg):
    """``methods gssapi`` needs the gssapi package (the optional extra) and
    a keytab that the workers can read: they run as ``user`` when one is
    set, and read the keytab at every client's first context step.  Returns
    the problems, on the ``methods`` or the ``gssapi keytab`` line."""
    if "gssapi" not in cfg.methods:
        return []
    if not gss.available():
        return [C.located(cfg.path, cfg.line_of.get("methods", 0), "'methods gssapi': " + gss.MISSING, "gssapi")]
    rcdir = os.environ.get("KRB5RCACHEDIR") or "/var/tmp"
    if cfg.user:
        try:
            st = os.stat(rcdir)
        except OSError:
            st = None
        if st is None or not writable_by(st, cfg.user, cfg.group):
            cfg.warnings.append((cfg.path, cfg.line_of.get("methods", 0),
                                 "'methods gssapi': Kerberos' replay cache directory %s (KRB5RCACHEDIR) is not "
                                 "writable by user %s: every GSS-API login will fail" % (rcdir, cfg.user)))
    keytab = cfg.gssapi_keytab
    if not keytab:
        return []
    line = cfg.line_of.get("gssapi keytab", 0)
    path = keytab[5:] if keytab.startswith("FILE:") else keytab
    if ":" in path.split("/", 1)[0]:
        return []             # another keytab type (MEMORY:, KEYRING:...): Kerberos' to read
    try:
        st = os.stat(path)
        with open(path, "rb"):
            pass
    except OSError as exc:
        return [C.located(cfg.path, line, "gssapi keytab %s: %s" % (path, exc.strerror), keytab)]
    if cfg.user and not readable_by(st, cfg.user, cfg.group):
        return [C.located(cfg.path, line, "gssapi keytab %s cannot be read by user %s, whom the workers run as "
                          "(e.g. chgrp that user's group and chmod 640)" % (path, cfg.user), keytab)]
    return []


def readable_by(st, user, group=None):
    """May ``user`` (and ``group``, when given, else the user's groups)
    read a file of stat ``st``, by its mode bits?"""
    return allowed_by(st, user, group, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def writable_by(st, user, group=None):
    """May ``user`` create files in a directory of stat ``st``?"""
    return allowed_by(st, user, group, stat.S_IWUSR | stat.S_IXUSR, stat.S_IWGRP | stat.S_IXGRP,
                      stat.S_IWOTH | stat.S_IXOTH)


def allowed_by(st, user, group, owner_bits, group_bits, other_bits):
    pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    if pw.pw_uid == 0:
        return True
    if group:
        gids = {grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid}
    else:
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    if st.st_uid == pw.pw_uid:
        bits = owner_bits
    elif st.st_gid in gids:
        bits = group_bits
    else:
        bits = other_bits
    return st.st_mode & bits == bits


def load_passwd(cfg):
    """Read the ``passwd`` file into ``cfg.passwd_db``.  Returns the
    problems: the file's own, by its lines, or -- when it cannot be read --
    one on the ``passwd`` line.  Hashes of different costs are a warning on
    the ``passwd`` line (timing tells some names apart)."""
    cfg.passwd_db = None
    if not cfg.passwd:
        return []
    try:
        cfg.passwd_db = PW.PasswdFile.load(cfg.passwd)
    except ValueError as exc:
        return [(cfg.path, cfg.line_of.get("passwd", 0), "passwd %s: %s" % (cfg.passwd, msg)) if line == 0
                else (f, line, msg) for f, line, msg in exc.args[0]]
    warning = PW.cost_warning(cfg.passwd_db.entries)
    if warning:
        cfg.warnings.append((cfg.path, cfg.line_of.get("passwd", 0), "passwd %s: %s" % (cfg.passwd, warning)))
    return []


def load_route(cfg):
    """Read the ``route`` file into ``cfg.route_table``.  Returns the
    problems: the file's own, by its lines, or -- when it cannot be read --
    one on the ``route`` line."""
    cfg.route_table = None
    if not cfg.route:
        return []
    table, problems = route.load(cfg.route)
    cfg.route_table = table
    return [(cfg.path, cfg.line_of.get("route", 0), msg) if line == 0 else (f, line, msg)
            for f, line, msg in problems]


def load_wayout(cfg):
    """Read the ``upstream`` way-out file into ``cfg.wayout`` (None: every
    connection direct).  Returns the problems: the file's own, by its
    lines; one on the ``upstream`` line when it cannot be read; a sockd
    line without servers; credentials in a file that anyone but root may
    read."""
    cfg.wayout = None
    if not cfg.upstream:
        return []
    line = cfg.line_of.get("upstream", 0)
    try:
        with open(cfg.upstream, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read(1 << 22).decode("utf-8", "replace")
    except OSError as exc:
        return [(cfg.path, line, "upstream %s: cannot read: %s" % (cfg.upstream, exc.strerror))]
    try:
        conf = wayout.parse_text(text, cfg.upstream, read_userfile=C.read_userfile)
    except wayout.WayoutError as exc:
        return [(f, ln, msg) if ln else (cfg.path, line, "upstream %s: %s" % (cfg.upstream, msg))
                for f, ln, msg in exc.problems]
    problems = wayout.server_problems(conf)
    secret = wayout.has_credentials(conf)
    if secret is not None and (st.st_uid != 0 or st.st_mode & 0o077):
        problems.append((secret.file, secret.line, "credentials in a file that others may read (owner uid %d, "
                         "mode %04o): chown root and chmod 600 %s" % (st.st_uid, st.st_mode & 0o7777,
                                                                       cfg.upstream)))
    if problems:
        return problems
    cfg.warnings.extend(conf.warnings)
    cfg.wayout = conf
    return []


def read_userfiles(cfg):
    """Read every userfile a ``*=`` list names into the ruleset; one that
    cannot be read matches nobody and is a warning on the first line naming
    it."""
    for u, rule in C.userfiles_named(cfg):
        names = C.read_userfile(u)
        cfg.ruleset.userfiles[u] = names
        if names is None:
            cfg.warnings.append((rule.file, rule.line, "Unable to open userfile (%s)" % u))
