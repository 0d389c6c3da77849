# BareCount: `make demo` runs the example DAGs on a real local Airflow; `make test` runs the whole suite.
# Only needs python3 (3.11). POSIX make: no GNU extensions.

VENV = .venv
PY = $(VENV)/bin/python

.PHONY: demo up test install lint clean system-deps

# ARGS: e.g. `make demo ARGS=--keep-running` (or `make up`) leaves Airflow running until Ctrl-C.
demo: install
	$(PY) scripts/demo.py $(ARGS)

up: install
	$(PY) scripts/demo.py --keep-running $(ARGS)

# ruff, mypy, then every test (unit, integration, system). pytest's exit code 5 ("no tests collected")
# fails the target like any other failure.
test: install lint system-deps
	@status=0; \
	AIRFLOW_HOME="$$(pwd)/.airflow-test" $(VENV)/bin/pytest -p no:cacheprovider tests || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# PostgreSQL (evidence index tests) and Redis (the Celery system test): apt-get when missing and root (scripts/system-deps.sh)
system-deps:
	@sh scripts/system-deps.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# Reinstalled every time (quick when nothing changed) so the venv always matches pyproject.toml and,
# when present, constraints.txt.
install: $(PY)
	@if [ -f constraints.txt ]; then \
		echo "$(VENV)/bin/pip install -c constraints.txt -e '.[test]'"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'; \
	else \
		echo "$(VENV)/bin/pip install -e '.[test]' (no constraints.txt)"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'; \
	fi

$(PY):
	@py=$$(command -v python3.11 || command -v python3) || { echo "python3 not found" >&2; exit 1; }; \
	echo "$$py -m venv $(VENV)"; \
	"$$py" -m venv $(VENV)

clean:
	rm -rf .airflow-demo .airflow-test .mypy_cache .ruff_cache .pytest_cache .hypothesis build
