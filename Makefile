# `make run` starts the whole system; `make test` runs the suite. Both set up from nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# log_statistics' compiled scanner, named as this Python imports an extension module.
SCANNER := maintenance/logstats/_scan$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: run test lint install install-dev bench soak drill-scale-out clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(VENV)/.installed-run $@

# Without a compiler the script warns and leaves no module: log_statistics then counts with
# its regular expression, and the next install tries again.
$(SCANNER): maintenance/logstats/_scan.c scripts/build_scanner.py | $(BIN)/python
	$(BIN)/python scripts/build_scanner.py

install: $(VENV)/.installed-run $(SCANNER)
install-dev: $(VENV)/.installed-dev $(SCANNER)

run: install
	$(BIN)/python scripts/run.py

test: install-dev
	$(BIN)/python scripts/embedded_redis.py --dir var/redis-test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: install-dev
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

soak: install-dev
	$(BIN)/python -m tests.soak.run $(SOAK_ARGS)

# As root: network namespaces, iptables, a PostgreSQL cluster and a Redis of its own.
drill-scale-out: install-dev
	command -v iptables >/dev/null || (apt-get update -q && apt-get install -y -q iptables)
	test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 || \
		(apt-get update -q && apt-get install -y -q faketime)
	$(BIN)/python tests/drills/scale_out.py $(DRILL_ARGS)

clean:
	rm -rf $(VENV) var $(SCANNER)
