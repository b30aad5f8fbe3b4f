# Every target refreshes .venv from pyproject.toml first, so a fresh clone needs only `make run`
# or `make test`. The stamp file makes the refresh a no-op until pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test fuzz lint conformance bench venv clean redis-server chromium

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/trio-gateway serve $(ARGS)

# The broker tests run real redis-server processes and the browser tests Debian's chromium:
# install the package when it is missing and we may (root), otherwise stop here with the
# reason rather than skip them. $(call debian_package,COMMAND,PACKAGE,WHAT NEEDS IT)
define debian_package
@command -v $(1) >/dev/null 2>&1 || { \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "installing $(2) (Debian package) for $(3)"; \
    (apt-get install -y -q $(2) >/dev/null 2>&1 || \
      (apt-get update -q >/dev/null && apt-get install -y -q $(2) >/dev/null)) && \
    command -v $(1) >/dev/null; \
  else \
    echo "make test: $(1) is missing; install it (apt-get install $(2)) or run as root" >&2; \
    exit 1; \
  fi; \
}
endef

redis-server:
	$(call debian_package,redis-server,redis-server,the broker tests)

chromium:
	$(call debian_package,chromium,chromium,the browser tests)

test: $(STAMP) redis-server chromium
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The fuzz targets (tests/fuzz/) with the "fuzz" hypothesis profile: FUZZ_EXAMPLES random
# examples in all (default 100,000; FUZZ_FIXED=1: a fixed sequence, as CI runs), shared
# between the targets, one target per core.
# `make test` runs the same targets with 600 fixed examples.
FUZZ_PYTEST = HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/python -m pytest tests/fuzz/test_fuzz.py -q -s \
	-p no:cacheprovider -o faulthandler_timeout=0
fuzz: $(STAMP)
	@$(FUZZ_PYTEST) -k websocket & websocket=$$!; $(FUZZ_PYTEST) -k http & http=$$!; \
	wait $$websocket; first=$$?; wait $$http; second=$$?; test $$first = 0 && test $$second = 0

# RFC 6455 conformance (Autobahn TestSuite) of the real reader/writer path, via /api/echo.
conformance: $(STAMP)
	bash scripts/conformance.sh

# Benchmark against the peer servers (naive trio, aiohttp, websockets, Node ws) and the write
# floor (needs 2 cores; a full run takes about 25 minutes, BENCH_ARGS=--quick about 4).
bench: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,bench]'
	npm ci --prefix scripts/bench_peers/node_ws --no-audit --no-fund --silent
	$(VENV)/bin/python scripts/bench.py $(BENCH_ARGS)

# ruff over everything; strict mypy over trio_gateway/ and tests/ (pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
