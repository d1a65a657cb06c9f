# Chargewatch — the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test install install-dev system-deps services services-down lint unit bench clean

demo: install  ## analyze the shipped sample capture with the embedded default (no services, no root)
	$(PYTHON) -m chargewatch.cli analyze samples/demo.pcap

# Byte-compile the packages at install, as pip does for a wheel: an editable install otherwise
# compiles them from source on every start wherever PYTHONDONTWRITEBYTECODE is set (about 0.1 s
# of every `chargewatch` command).
COMPILE = $(PYTHON) -m compileall -q chargewatch collectors detectors dashboards models >/dev/null

# The native capture front end (Rust + PyO3, native/): built when Rust's cargo is there (rustup
# puts it in ~/.cargo/bin); without it chargewatch reads captures with its Python decoder, which
# gives the same results, slower. `make test` requires it (NATIVE_REQUIRED=1): its tests check it
# against the Python decoder.
NATIVE_REQUIRED ?= 0
CARGO_PATH = $(HOME)/.cargo/bin:$(PATH)
define NATIVE
	@if PATH="$(CARGO_PATH)" command -v cargo >/dev/null 2>&1; then \
	  PATH="$(CARGO_PATH)" $(PIP) install -q ./native; \
	elif [ "$(1)" = 1 ]; then \
	  echo "error: Rust's cargo is needed to build native/ (install it with rustup)"; exit 1; \
	else \
	  echo "note: Rust's cargo not found: chargewatch reads captures with its Python decoder (slower)."; \
	  echo "      Install Rust (rustup) and run 'make install' again for the native one."; \
	fi
endef

install:
	$(PIP) install -q -e .
	$(call NATIVE,$(NATIVE_REQUIRED))
	$(COMPILE)

install-dev:
	$(PIP) install -q -e '.[dev]'
	$(call NATIVE,1)
	$(COMPILE)

system-deps:  ## tshark for the benchmark, libpcap for live capture, chromium + chromedriver for the dashboard test (Debian, as root)
	@if ! command -v tshark >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tshark; \
	  else echo "tshark missing: install Debian's tshark package (needs root)"; exit 1; fi; \
	fi
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else echo "chromium missing: install Debian's chromium and chromium-driver packages (needs root)"; exit 1; fi; \
	fi

services:  ## start the real Kafka + Elasticsearch (safe to call twice)
	$(PYTHON) -m chargewatch.devstack up

services-down:
	$(PYTHON) -m chargewatch.devstack down

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	cd native && PATH="$(CARGO_PATH)" cargo fmt --check && PATH="$(CARGO_PATH)" cargo clippy -q --release -- -D warnings

unit:
	$(PYTHON) -m pytest -m "not services" -q

bench:  ## full benchmarks: analyze vs tshark on a 120k-packet capture; detector throughput and memory; proxy latency; model scoring
	$(PYTHON) bench/bench_analyze.py
	$(PYTHON) bench/bench_detectors.py
	$(PYTHON) bench/bench_proxy.py
	$(PYTHON) bench/bench_models.py

# The whole suite: installs, starts the real services, runs everything, stops them.
test: install-dev system-deps lint
	@set -e; $(PYTHON) -m chargewatch.devstack up --fresh; \
	status=0; (cd native && PATH="$(CARGO_PATH)" cargo test -q --release) || status=$$?; \
	$(PYTHON) -m pytest -q || status=$$?; \
	$(PYTHON) bench/bench_analyze.py --smoke || status=$$?; \
	$(PYTHON) bench/bench_detectors.py --smoke || status=$$?; \
	$(PYTHON) bench/bench_proxy.py --smoke || status=$$?; \
	$(PYTHON) bench/bench_models.py --smoke || status=$$?; \
	$(PYTHON) -m chargewatch.devstack down || true; \
	exit $$status

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache native/target
