#!/bin/bash
# Build the GSS-API reference parts the tests use, once per machine:
#   dante  Dante 1.4.2 with GSS-API (danted-gss and socksify), build-dante-gss.sh
#   curl   curl 7.88.1 with the SOCKS5 GSS-API fix, build-curl-gss.sh
# Each lands in $SOCKD_TEST_CACHE/NAME-gss-HASH, HASH being the SHA-256 of the
# build script and of common.sh (which it sources), so a changed script builds
# afresh and an unchanged one costs nothing.  Dante and curl may build at the
# same time (one lock per NAME; common.sh shares the rest).
# The cache lives outside the checkout (default /var/cache/sockd-tests).
# Prints the prefix on stdout; the build's own output goes to a log beside it.
set -euo pipefail
name=$1
here=$(cd "$(dirname "$0")" && pwd)
cache=${SOCKD_TEST_CACHE:-/var/cache/sockd-tests}
script=$here/build-$name-gss.sh
hash=$(cat "$script" "$here/common.sh" | sha256sum | cut -c1-16)
prefix=$cache/$name-gss-$hash
if [ -e "$prefix/.built" ]; then echo "$prefix"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock-$name"
flock 9
if [ -e "$prefix/.built" ]; then echo "$prefix"; exit 0; fi
rm -rf "$prefix" && mkdir -p "$prefix"
echo "building $name with GSS-API into $prefix (a few minutes, once per machine)" >&2
if ! PREFIX=$prefix WORK=$cache/src APTDIR=$cache/apt bash "$script" >"$prefix.log" 2>&1; then
    echo "build of $name failed; its log:" >&2
    tail -n 40 "$prefix.log" >&2
    exit 1
fi
touch "$prefix/.built"
echo "built $name in ${SECONDS}s: $prefix" >&2
echo "$prefix"
