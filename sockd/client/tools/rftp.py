"""rftp [-n] [-p] [-v] HOST [PORT]

A line-mode FTP client in the BSD ftp style, through socks.conf.  Data
connections are active by default: the data socket is bound, named with
getsockname() and listened on in the classic order, which the library turns
into a SOCKS BIND when the control connection went through a server (the
server then receives the FTP server's data connection).  -p (or the
``passive`` command) uses PASV instead, and the data connection is an
ordinary routed connect.

Commands are read from standard input, with an ``ftp>`` prompt when it is
a terminal.  Every reply line is shown; every wait is bounded.  The exit
status is 1 when any command failed, else 0.
"""

import argparse
import getpass
import netrc
import os
import re
import shlex
import socket
import sys
import time

from . import common
from .. import core

MAX_REPLY_LINE = 8192
MAX_REPLY_LINES = 1000
BLOCK = 65536


class FTPError(Exception):
    """A command failed; the message is for the user."""


class Session:
    def __init__(self, out, passive=False, verbose=True):
        self.out = out
        self.passive = passive
        self.verbose = verbose
        self.ctrl = None
        self.rfile = None
        self.host = None
        self.binary = True
        self.failed = False

    # -- the control connection --
    def say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    def open(self, host, port=21):
        if self.ctrl is not None:
            raise FTPError("Already connected to %s, use close first." % self.host)
        try:
            self.ctrl = common.connect(host, port)
        except common.Fail as exc:
            raise FTPError("ftp: connect: %s" % exc) from None
        self.host = host
        self.rfile = self.ctrl.makefile("rb")
        self.say("Connected to %s." % host)
        code, _ = self.reply()
        if code != 220:
            self.close_quietly()
            raise FTPError("ftp: the server did not greet us")

    def close_quietly(self):
        for f in (self.rfile, self.ctrl):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self.ctrl = self.rfile = None

    def need(self):
        if self.ctrl is None:
            raise FTPError("Not connected.")

    def readline(self):
        line = self.rfile.readline(MAX_REPLY_LINE + 1)
        if not line:
            self.close_quietly()
            raise FTPError("421 Service not available, remote server has closed connection")
        if len(line) > MAX_REPLY_LINE:
            self.close_quietly()
            raise FTPError("ftp: reply line longer than %d bytes; connection closed" % MAX_REPLY_LINE)
        return common.printable(line).rstrip("\n").rstrip("\r")

    def reply(self):
        """One reply, multi-line ones whole: (code, text).  Lines are shown."""
        try:
            first = self.readline()
            lines = [first]
            m = re.match(r"^(\d{3})([ -])", first)
            if not m:
                self.close_quietly()
                raise FTPError("ftp: not an FTP reply: %s" % first[:80])
            code = int(m.group(1))
            if m.group(2) == "-":
                end = "%d " % code
                while True:
                    line = self.readline()
                    lines.append(line)
                    if line.startswith(end) or line == str(code):
                        break
                    if len(lines) > MAX_REPLY_LINES:
                        self.close_quietly()
                        raise FTPError("ftp: reply of more than %d lines; connection closed" % MAX_REPLY_LINES)
        except (socket.timeout, TimeoutError):
            self.close_quietly()
            raise FTPError("ftp: no reply for %d seconds; connection closed" % common.WAIT) from None
        except OSError as exc:
            self.close_quietly()
            raise FTPError("ftp: %s" % (exc.strerror or exc)) from None
        if self.verbose:
            for line in lines:
                self.say(line)
        return code, "\n".join(lines)

    def command(self, text, show=None):
        """Send a command line; returns the reply (code, text)."""
        self.need()
        try:
            self.ctrl.sendall(text.encode("utf-8") + b"\r\n")
        except OSError as exc:
            self.close_quietly()
            raise FTPError("ftp: %s" % (exc.strerror or exc)) from None
        return self.reply()

    def expect(self, text, ok=(2,)):
        code, msg = self.command(text)
        if code // 100 not in ok:
            raise FTPError(None)
        return code, msg

    # -- logging in --
    def login(self, user, password=None, account_prompt=True):
        code, _ = self.command("USER %s" % user)
        if code == 331:
            if password is None:
                password = self.ask_password(user)
            code, _ = self.command("PASS %s" % password)
        if code // 100 != 2:
            raise FTPError("Login failed.")

    def ask_password(self, user):
        if sys.stdin.isatty():
            if user in ("anonymous", "ftp"):
                # the classic rftp echoes the password of an anonymous login
                return input("Password:")
            return getpass.getpass("Password:")
        line = sys.stdin.readline()
        return line.rstrip("\n")

    # -- data connections --
    def data_connection(self, cmd):
        """Send ``cmd`` (RETR, STOR, LIST...) with a data connection made
        the current way; returns the connected data socket."""
        if self.passive:
            return self.passive_data(cmd)
        return self.active_data(cmd)

    def active_data(self, cmd):
        local = self.ctrl.getsockname()[0]
        fam = socket.AF_INET6 if ":" in local else socket.AF_INET
        d = core.socksocket(fam, socket.SOCK_STREAM)
        d.settimeout(common.WAIT)
        try:
            # the classic order: bind, getsockname, listen, accept
            d.bind((local, 0))
            host, port = d.getsockname()[:2]
            d.listen(1)
        except (core.SocksError, OSError) as exc:
            d.close()
            raise FTPError("ftp: bind: %s" % exc) from None
        if ":" in host:
            self.expect("EPRT |2|%s|%d|" % (host, port))
        else:
            self.expect("PORT %s,%d,%d" % (host.replace(".", ","), port >> 8, port & 0xFF))
        try:
            code, _ = self.command(cmd)
            if code // 100 != 1:
                raise FTPError(None)
            try:
                conn, _ = d.accept()
            except (core.SocksError, OSError) as exc:
                raise FTPError("ftp: accept: %s" % exc) from None
        finally:
            d.close()
        conn.settimeout(common.WAIT)
        return conn

    def passive_data(self, cmd):
        peer = self.ctrl.getpeername()[0]
        if ":" in peer:
            code, text = self.expect("EPSV")
            m = re.search(r"\(\|\|\|(\d{1,5})\|\)", text)
            if not m or not 0 < int(m.group(1)) < 65536:
                raise FTPError("ftp: cannot read the EPSV reply")
            host, port = peer, int(m.group(1))
        else:
            code, text = self.expect("PASV")
            m = re.search(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})", text)
            nums = [int(x) for x in m.groups()] if m else []
            if not nums or any(n > 255 for n in nums):
                raise FTPError("ftp: cannot read the PASV reply")
            host, port = "%d.%d.%d.%d" % tuple(nums[:4]), nums[4] << 8 | nums[5]
            if host == "0.0.0.0":
                host = peer
        try:
            conn = common.connect(host, port)
        except common.Fail as exc:
            raise FTPError("ftp: data connection: %s" % exc) from None
        code, _ = self.command(cmd)
        if code // 100 != 1:
            conn.close()
            raise FTPError(None)
        return conn

    def finish(self):
        code, _ = self.reply()
        if code // 100 != 2:
            raise FTPError(None)

    def set_type(self):
        self.expect("TYPE %s" % ("I" if self.binary else "A"))

    # -- transfers --
    def get(self, remote, local=None):
        self.need()
        local = local or os.path.basename(remote.rstrip("/")) or "ftp.out"
        self.say("local: %s remote: %s" % (local, remote))
        self.set_type()
        try:
            f = open(local, "wb")
        except OSError as exc:
            raise FTPError("local: %s: %s" % (local, exc.strerror)) from None
        t0 = time.monotonic()
        n = 0
        with f:
            conn = self.data_connection("RETR %s" % remote)
            try:
                n = self.copy_in(conn, f.write)
            finally:
                conn.close()
        self.finish()
        self.report(n, "received", t0)

    def put(self, local, remote=None):
        self.need()
        remote = remote or os.path.basename(local)
        try:
            f = open(local, "rb")
        except OSError as exc:
            raise FTPError("local: %s: %s" % (local, exc.strerror)) from None
        self.say("local: %s remote: %s" % (local, remote))
        self.set_type()
        t0 = time.monotonic()
        n = 0
        with f:
            conn = self.data_connection("STOR %s" % remote)
            try:
                while True:
                    block = f.read(BLOCK)
                    if not block:
                        break
                    if not self.binary:
                        block = block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                    conn.sendall(block)
                    n += len(block)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise FTPError("ftp: send: %s" % (exc.strerror or exc)) from None
            finally:
                conn.close()
        self.finish()
        self.report(n, "sent", t0)

    def listing(self, cmd, path=None):
        self.need()
        self.expect("TYPE A")
        conn = self.data_connection(cmd + (" " + path if path else ""))
        try:
            self.copy_in(conn, lambda b: self.out.write(common.printable(b)))
        finally:
            conn.close()
            self.out.flush()
        self.finish()

    def copy_in(self, conn, write):
        n = 0
        while True:
            try:
                block = conn.recv(BLOCK)
            except (socket.timeout, TimeoutError):
                raise FTPError("ftp: no data for %d seconds" % common.WAIT) from None
            except OSError as exc:
                raise FTPError("ftp: receive: %s" % (exc.strerror or exc)) from None
            if not block:
                return n
            n += len(block)
            if not self.binary:
                block = block.replace(b"\r\n", b"\n")
            write(block)

    def report(self, n, verb, t0):
        secs = max(time.monotonic() - t0, 1e-6)
        self.say("%d bytes %s in %.2f secs (%.1f kB/s)" % (n, verb, secs, n / secs / 1024))


HELP = """\
Commands:
  open HOST [PORT]     connect            user NAME [PASSWORD]  log in
  pass PASSWORD        send the password  cd DIR, pwd           remote directory
  get REMOTE [LOCAL]   download           put LOCAL [REMOTE]    upload
  ls [DIR], dir [DIR]  list               lcd [DIR]             local directory
  passive              toggle PASV        binary, ascii         transfer type
  close                disconnect         quit, bye             end
"""


def run_command(s, line):
    """Carry out one command line.  Returns False to end."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if not words:
        return True
    cmd, args = words[0].lower(), words[1:]
    if cmd in ("quit", "bye", "exit"):
        if s.ctrl is not None:
            try:
                s.command("QUIT")
            except FTPError:
                pass
            s.close_quietly()
        return False
    if cmd in ("help", "?"):
        s.out.write(HELP)
    elif cmd == "open":
        if not args:
            raise FTPError("usage: open HOST [PORT]")
        s.open(args[0], common.port_of(args[1]) if len(args) > 1 else 21)
    elif cmd == "close":
        s.need()
        s.command("QUIT")
        s.close_quietly()
    elif cmd == "user":
        s.need()
        if not args:
            raise FTPError("usage: user NAME [PASSWORD]")
        s.login(args[0], args[1] if len(args) > 1 else None)
    elif cmd == "pass":
        if not args:
            raise FTPError("usage: pass PASSWORD")
        s.expect("PASS %s" % args[0])
    elif cmd == "cd":
        if len(args) != 1:
            raise FTPError("usage: cd DIR")
        s.expect("CWD %s" % args[0])
    elif cmd == "pwd":
        s.expect("PWD")
    elif cmd == "get" or cmd == "recv":
        if not 1 <= len(args) <= 2:
            raise FTPError("usage: get REMOTE [LOCAL]")
        s.get(*args)
    elif cmd == "put" or cmd == "send":
        if not 1 <= len(args) <= 2:
            raise FTPError("usage: put LOCAL [REMOTE]")
        s.put(*args)
    elif cmd in ("ls", "dir"):
        s.listing("NLST" if cmd == "ls" else "LIST", args[0] if args else None)
    elif cmd == "passive":
        s.passive = not s.passive
        s.say("Passive mode %s." % ("on" if s.passive else "off"))
    elif cmd == "binary":
        s.binary = True
        if s.ctrl is not None:
            s.set_type()
    elif cmd == "ascii":
        s.binary = False
        if s.ctrl is not None:
            s.set_type()
    elif cmd == "lcd":
        path = args[0] if args else os.path.expanduser("~")
        try:
            os.chdir(path)
        except OSError as exc:
            raise FTPError("local: %s: %s" % (path, exc.strerror)) from None
        s.say("Local directory now %s" % os.getcwd())
    else:
        raise FTPError("?Invalid command")
    return True


def auto_login(s, host, prog_user):
    try:
        auth = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        auth = None
    if auth and auth[0]:
        s.login(auth[0], auth[2])
        return
    if sys.stdin.isatty():
        name = input("Name (%s:%s): " % (host, prog_user)).strip()
    else:
        s.out.write("Name (%s:%s): " % (host, prog_user))
        s.out.flush()
        name = sys.stdin.readline().strip()
        s.out.write("\n")
    s.login(name or prog_user)


def main(argv=None):
    p = argparse.ArgumentParser(prog="rftp", description="FTP through a SOCKS server, as socks.conf says")
    p.add_argument("-n", dest="no_login", action="store_true", help="no automatic login")
    p.add_argument("-p", dest="passive", action="store_true", help="passive mode (PASV) data connections")
    p.add_argument("-v", dest="verbose", action="store_true", help="show every reply (the default)")
    p.add_argument("host", nargs="?")
    p.add_argument("port", nargs="?", default="21")
    a = p.parse_args(argv)
    common.start("rftp")
    s = Session(sys.stdout, passive=a.passive)
    interactive = sys.stdin.isatty()
    if a.host:
        try:
            s.open(a.host, common.port_of(a.port))
            if not a.no_login:
                auto_login(s, a.host, core._users()[0])
        except (FTPError, common.Fail) as exc:
            s.failed = True
            if exc.args and exc.args[0]:
                sys.stderr.write("%s\n" % exc.args[0])
    while True:
        if interactive:
            try:
                line = input("ftp> ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        try:
            if not run_command(s, line.strip()):
                break
        except (FTPError, common.Fail) as exc:
            s.failed = True
            if exc.args and exc.args[0]:
                sys.stderr.write("%s\n" % exc.args[0])
    s.close_quietly()
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
