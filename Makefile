# sockd -- the two commands a new user needs are `make run` and `make test`.

PYTHON   ?= python3
VENV     ?= .venv
PREFIX   ?= /usr/local
DESTDIR  ?=
LIBDIR    = $(PREFIX)/lib/sockd
MANDIR    = $(PREFIX)/share/man
VPY       = $(VENV)/bin/python
# --no-compile: pip byte-compiles every file it installs (numpy and matplotlib
# are thousands), half of the install's time; Python compiles what is imported.
PIP       = $(VPY) -m pip --disable-pip-version-check -q
PIP_INSTALL = $(PIP) install --no-compile

SCRIPTS  := $(notdir $(wildcard bin/*))
MANPAGES := $(wildcard man/*.[1-8])

.PHONY: all venv run test test-deps debs gss-build-dante gss-build-curl check lint man install uninstall clean bench bench-quick deb

all: venv

# A virtual environment with sockd installed in it (editable: edits apply at once).
venv: $(VENV)/.installed
$(VPY):
	$(PYTHON) -m venv $(VENV) || { \
		echo "python3 -m venv failed; installing Debian's python3-venv"; rm -rf $(VENV); \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv \
		&& $(PYTHON) -m venv $(VENV); }
$(VENV)/.installed: setup.cfg pyproject.toml | $(VPY)
	$(PIP_INSTALL) -e .
	$(VPY) -m compileall -q sockd
	touch $@

# Start sockd in the foreground on the embedded default configuration:
# 127.0.0.1:1080, loopback clients only, log lines on the terminal and in syslog.
run: venv
	$(VENV)/bin/sockd -F -f etc/sockd.conf

# Everything the tests need: the Debian packages first, with apt-get when
# they are missing (krb5's headers and the compilers are needed by what
# follows); then, side by side, the Python packages into the venv and the
# GSS-API test bed: Dante and curl built with GSS-API
# (tests/gssapi/build-cached.sh: once per machine, keyed by the hash of its
# build scripts).  The three are each one core most of their time (configure
# scripts, one Cython file after another).
test-deps: debs
	@$(MAKE) --no-print-directory -j3 $(VENV)/.test-deps gss-build-dante gss-build-curl
debs:
	sh tests/install-debs.sh
# One pip run: sockd with its gssapi extra (no Linux wheel: pip builds the
# sdist against libkrb5-dev once, then reuses its wheel cache) and the tests'
# packages.  One resolution instead of three: 20 s here, against 28.
$(VENV)/.test-deps: tests/requirements.txt setup.cfg pyproject.toml | $(VPY)
	$(PIP_INSTALL) -e '.[gssapi]' -r tests/requirements.txt
	touch $(VENV)/.installed $@
gss-build-dante gss-build-curl:
	@bash tests/gssapi/build-cached.sh $(@:gss-build-%=%) >/dev/null

# Two pytest-xdist workers (the machines here have two cores; most tests
# wait on processes and sockets more than they compute); tests marked
# serial run alone (tests/README.md).  TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
# Byte-compiled first, and with bytecode written: where the environment sets
# PYTHONDONTWRITEBYTECODE (the machines here do), every sockd a test starts
# would compile the package from source again, 0.4 s of CPU a start.
test: test-deps
	$(VPY) -m compileall -q sockd tests
	env -u PYTHONDONTWRITEBYTECODE $(VPY) -m pytest -q -ra -n $(TEST_WORKERS) --maxschedchunk 1 tests

# sockd side by side with direct loopback, Dante and microsocks (and GSS-API, so
# the test bed first): one table with the CPU each server spent, the price of
# each capability and the performance targets, in about three minutes; the JSON
# and the chart land in bench/out/ (matplotlib: the bench extra, installed
# here).  `make bench BENCH_ARGS=--quick` or `make bench-quick` for a smoke run
# (make itself rejects `make bench --quick`); bench/bench.py --help for the rest.
bench: test-deps $(VENV)/.bench
	$(VPY) bench/bench.py $(BENCH_ARGS)
bench-quick:
	@$(MAKE) --no-print-directory bench BENCH_ARGS="--quick $(BENCH_ARGS)"
$(VENV)/.bench: setup.cfg pyproject.toml | venv
	$(PIP_INSTALL) -e '.[bench]'
	touch $@

# The Debian package (debian/): built with dpkg-buildpackage in a copy of the
# checkout as git sees it (tracked and new files, not the ignored .venv or
# build products), so the tree stays clean; the .deb lands in $(DEB_OUT).
# Debian's own python3 builds it (PATH without pyenv's or /usr/local's), and
# dpkg-buildpackage names any build dependency missing (make debs installs
# them).  Then: apt install ./dist/sockd_*_all.deb
DEB_OUT  ?= dist
DEB_TREE  = build/deb
deb:
	rm -rf $(DEB_TREE) && mkdir -p $(DEB_TREE)/sockd $(DEB_OUT)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z -co --exclude-standard | tar -c --null -T - --ignore-failed-read -f - ; \
	else \
		tar -c --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git -f - . ; \
	fi | tar -x -C $(DEB_TREE)/sockd
	cd $(DEB_TREE)/sockd && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	mv $(DEB_TREE)/sockd_*_all.deb $(DEB_TREE)/sockd_*.buildinfo $(DEB_TREE)/sockd_*.changes $(DEB_OUT)/
	rm -rf $(DEB_TREE)
	@ls -l $(DEB_OUT)/sockd_*_all.deb

# Lint the manual pages.
man:
	mandoc -T lint -W warning $(MANPAGES)

install:
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-compile --upgrade \
		--target "$(DESTDIR)$(LIBDIR)" .
	install -d "$(DESTDIR)$(PREFIX)/bin"
	py=$$($(PYTHON) -c 'import sys; print(sys.executable)'); \
	for s in $(SCRIPTS); do \
		sed "1s|.*|#!$$py|" bin/$$s > "$(DESTDIR)$(PREFIX)/bin/$$s"; \
		chmod 755 "$(DESTDIR)$(PREFIX)/bin/$$s"; \
	done
	for m in $(MANPAGES); do \
		sec=$${m##*.}; install -d "$(DESTDIR)$(MANDIR)/man$$sec"; \
		install -m 644 $$m "$(DESTDIR)$(MANDIR)/man$$sec/"; \
	done

uninstall:
	rm -rf "$(DESTDIR)$(LIBDIR)"
	for s in $(SCRIPTS); do rm -f "$(DESTDIR)$(PREFIX)/bin/$$s"; done
	for m in $(MANPAGES); do sec=$${m##*.}; rm -f "$(DESTDIR)$(MANDIR)/man$$sec/$${m##*/}"; done

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
