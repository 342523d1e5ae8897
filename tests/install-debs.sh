#!/bin/sh
# Install the Debian packages the tests use, when missing.  Daemons are not
# started by their postinst scripts: the tests start what they need on
# loopback themselves, by PID.
set -eu
PKGS="curl netcat-openbsd socat mandoc iproute2 procps dante-server dante-client microsocks oidentd openbsd-inetd rsyslog systemd util-linux passwd haproxy gcc libc6-dev"
# ways out (issue 14): an HTTP proxy to chain through with CONNECT
PKGS="$PKGS tinyproxy"
# the metrics endpoint (issue 16): a real Prometheus scrapes sockd
PKGS="$PKGS prometheus"
# GSS-API: an MIT realm (KDC, kadmin.local, kinit), the headers pip's gssapi
# and the Dante/curl builds compile against, and those builds' tools.
# krb5-config's debconf writes /etc/krb5.conf; harmless, as every process the
# tests start is given KRB5_CONFIG.
PKGS="$PKGS krb5-kdc krb5-admin-server krb5-user libkrb5-dev"
PKGS="$PKGS build-essential autoconf automake libtool libtool-bin flex bison dpkg-dev"
# The Debian package (make deb, tests/integration/test_package.py): what
# dpkg-buildpackage needs, lintian, and the package's dependencies, which
# are also what the Debian-stack tests run against (python3-pytest and
# python3-hypothesis for tests/test_debian_python.py).
PKGS="$PKGS debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian adduser"
PKGS="$PKGS python3-daemon python3-setproctitle python3-bcrypt python3-pytest python3-hypothesis"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "not root: cannot install$missing" >&2
    exit 1
fi
# Keep postinst scripts from starting daemons on this machine.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
