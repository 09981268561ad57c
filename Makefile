# inferd: `make run` serves the default model on 127.0.0.1:8000, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_DIR := models/efficientnet-lite0
CONFIG ?= inferd.conf.example
# Debian packages the system tests use (promtool/prometheus, a real systemd in a namespace).
SYSTEM_PACKAGES := prometheus systemd curl iproute2 util-linux

.PHONY: run test test-fast venv model system-deps bench soak install uninstall clean

run: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/inferd --config $(CONFIG)

test: $(VENV)/.installed $(MODEL_DIR)/model.onnx system-deps
	$(BIN)/pytest -q

test-fast: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/pytest -q -m "not system and not slow"

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[build,test]'
	touch $@

model: $(MODEL_DIR)/model.onnx

$(MODEL_DIR)/model.onnx: $(VENV)/.installed models/build.py models/onnx_graphs.py models/torch_legacy.py
	$(BIN)/python models/build.py efficientnet-lite0 --out $(MODEL_DIR)

# Installs Debian packages only when missing, and only as root; system tests skip without them.
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "not installed (system tests will skip): $$missing"; fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis $(MODEL_DIR)/model.onnx

# Benchmarks (issue 5): inferd vs. the in-process limit vs. the reference design.
# Bench-only dependencies (the reference design: FastAPI, uvicorn) go into the venv, not the daemon.
bench: $(VENV)/.installed $(VENV)/.bench-installed $(MODEL_DIR)/model.onnx
	$(BIN)/python -m bench.run

$(VENV)/.bench-installed: setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# Soak suite (issue 6): SOAK_SECONDS=600 make soak for a long run.
soak: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/python -m tests.soak --seconds $${SOAK_SECONDS:-120}

# Running as a service (issue 3), as root: PREFIX (/opt/inferd), SYSCONFDIR (/etc/inferd), UNITDIR
# (/etc/systemd/system) and VENV_PYTHON (/usr/bin/python3) may be overridden, e.g.
# `make install PREFIX=/srv/inferd`; `make uninstall PURGE=1` also removes an edited config.
install:
	sh systemd/install.sh

uninstall:
	sh systemd/uninstall.sh
