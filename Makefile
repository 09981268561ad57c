# inferd: `make run` serves the default model on 127.0.0.1:8000, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_DIR := models/efficientnet-lite0
CONFIG ?= inferd.conf.example
# Debian packages the system tests use (promtool/prometheus, a real systemd in a namespace).
SYSTEM_PACKAGES := prometheus systemd curl iproute2 util-linux

.PHONY: run test test-fast venv model system-deps bench bench-peers bench-peers-venvs soak install uninstall clean

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

# Benchmarks (issue 5): inferd vs. the in-process limit vs. the reference design; (issue 12) vs. the
# CPU bound and the peer model servers. Bench-only dependencies (the reference design: FastAPI,
# uvicorn) go into the venv, not the daemon; each peer gets a venv of its own (bench-peers-venvs).
bench: $(VENV)/.installed $(VENV)/.bench-installed $(MODEL_DIR)/model.onnx bench-peers-venvs
	$(BIN)/python -m bench.run

# The peer table alone (bench/peer_table.py): inferd, BentoML, LitServe, mosec, KServe.
bench-peers: $(VENV)/.installed $(VENV)/.bench-installed $(MODEL_DIR)/model.onnx bench-peers-venvs
	$(BIN)/python -m bench.run --only peers

# One venv per peer from bench/peers/requirements/<name>.txt (their dependencies clash), inferd's
# runtime install alone (`pip install .`, as the daemon is deployed) and a bare venv, the baseline
# of the install sizes. Each is remade only when its requirements change; a peer that fails to
# install is left out of the table with the reason.
PEER_VENVS := .venv-peers
PEERS := bentoml litserve mosec kserve
bench-peers-venvs: $(PEERS:%=$(PEER_VENVS)/%/.installed) $(PEER_VENVS)/inferd/.installed $(PEER_VENVS)/bare/.installed

$(PEER_VENVS)/%/.installed: bench/peers/requirements/%.txt
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/python -m pip install --quiet -r $< || { rm -rf $(PEER_VENVS)/$*; echo "$*: not installed"; }
	test ! -d $(PEER_VENVS)/$* || touch $@

$(PEER_VENVS)/inferd/.installed: setup.cfg pyproject.toml
	rm -rf $(PEER_VENVS)/inferd
	$(PYTHON) -m venv $(PEER_VENVS)/inferd
	$(PEER_VENVS)/inferd/bin/python -m pip install --quiet .
	touch $@

$(PEER_VENVS)/bare/.installed:
	rm -rf $(PEER_VENVS)/bare
	$(PYTHON) -m venv $(PEER_VENVS)/bare
	touch $@

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
