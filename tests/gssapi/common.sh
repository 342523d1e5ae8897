# Sourced by build-dante-gss.sh and build-curl-gss.sh (and part of their cache
# key, see build-cached.sh).  The two builds may run at the same time (make
# test-deps starts them in parallel), so what they share is taken in turns:
# dpkg through apt's own lock, the private deb-src lists through a flock.
# Needs APTDIR set; leaves /etc/apt and apt's own caches untouched.

export DEBIAN_FRONTEND=noninteractive

# Install the Debian packages named that are missing.  apt-get waits for the
# dpkg lock (the other build, or make's `debs`) instead of failing at once.
need_debs() {
    local missing="" p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends $missing >/dev/null
}

# apt-get with the private deb-src list under $APTDIR (made from this
# machine's own Debian sources), its lists refreshed at most hourly.  Whoever
# comes first makes it; the other build waits on the lock and reuses it.
# Dir::Cache is private too, so the system's pkgcache.bin is never rebuilt from
# these lists.
apt_src() {
    local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APTDIR/parts"
                -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache")
    mkdir -p "$APTDIR/parts" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    (
        flock 8
        if [ -z "$(find "$APTDIR/.updated" -mmin -60 2>/dev/null)" ]; then
            if [ -e /etc/apt/sources.list.d/debian.sources ]; then
                sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$APTDIR/parts/src.sources"
            else
                sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$APTDIR/parts/src.list"
            fi
            apt-get "${opts[@]}" update >/dev/null
            touch "$APTDIR/.updated"
        fi
        apt-get "${opts[@]}" "$@"
    ) 8>"$APTDIR/.lock"
}
