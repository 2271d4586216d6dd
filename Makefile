# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PORT   ?= 9896
# Two workers: the suite mostly waits on sockets and timers. PYTEST_ARGS= runs it in one process.
PYTEST_ARGS ?= -n 2 --dist load

.PHONY: demo test system-deps venv clean check-config readme-tables soak bench lock dashboards docs kubernetes-rules generate

# The versions in requirements/test.lock (every dependency of the exporter, the demo and the
# tests, pinned), then the exporter itself; `make lock` refreshes the locks from pyproject.toml.
$(VENV)/.installed: pyproject.toml requirements/test.lock
	@sh scripts/ensure-venv-support.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements/test.lock
	$(VENV)/bin/pip install --quiet --no-deps -e '.[test]'
	@touch $@

LOCK_ARGS = --quiet --strip-extras --no-emit-index-url --no-emit-find-links --unsafe-package energy-meter-exporter
lock: venv
	$(VENV)/bin/pip install --quiet pip-tools
	$(VENV)/bin/pip-compile $(LOCK_ARGS) --upgrade -o requirements/app.lock pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_ARGS) --upgrade --extra demo -o requirements/demo.lock pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_ARGS) --upgrade --extra test -o requirements/test.lock pyproject.toml

venv: $(VENV)/.installed

demo: venv
	@sh scripts/install-system-deps.sh demo
	$(VENV)/bin/python -m demo --port $(PORT)

system-deps:
	@sh scripts/install-system-deps.sh

test: system-deps venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

check-config: venv
	$(VENV)/bin/energy-meter-exporter check-config --no-secrets --config.file config.example.yaml

# The exporter at fleet scale beside prometheus_client and a real Pushgateway (under 10 minutes):
# prints a table and writes bench/RESULTS.md. BENCH_ARGS: e.g. --sizes 100,1000 for a quick run.
BENCH_ARGS ?=
bench: system-deps venv
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

# Minutes, not part of `make test`: 1,000 simulated meters, 10 % failing, memory/fds/tasks slopes.
SOAK_MINUTES ?= 10
soak: venv
	$(VENV)/bin/python -m bench.soak --targets 1000 --minutes $(SOAK_MINUTES) --inspect

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build site *.egg-info

readme-tables: venv
	$(VENV)/bin/python scripts/update-readme-tables.py

# grafana/dashboards/*.json from the code in dashboards/ (tests/test_dashboards_code.py keeps them equal).
dashboards: venv
	$(VENV)/bin/python -m dashboards

# deploy/kubernetes/base/prometheusrule.yaml from the rule files prometheus/prometheus.yml lists.
kubernetes-rules: venv
	$(VENV)/bin/python scripts/generate-kubernetes-rules.py

# Everything generated from the code: docs tables and config.schema.json, dashboards, PrometheusRule.
generate: readme-tables dashboards kubernetes-rules

# The manual (docs/, mkdocs.yml) as a site in site/; `$(VENV)/bin/mkdocs serve` to read it live.
docs: venv
	$(VENV)/bin/mkdocs build --strict
