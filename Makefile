# inferd: `make run` serves the default model on 127.0.0.1:8000, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_DIR := models/efficientnet-lite0
CONFIG ?= inferd.conf.example
# Debian packages the system tests use (promtool/prometheus, a real systemd in a namespace, HAProxy
# in front of a fleet), and those the container image and its tests use (issue 15).
SYSTEM_PACKAGES := prometheus systemd curl iproute2 util-linux haproxy
CONTAINER_PACKAGES := podman runc catatonit mmdebstrap
# A real browser for the /docs page's test (tests/protocols/test_docs_page.py, issue 14), driven by selenium.
BROWSER_PACKAGES := chromium chromium-driver

.PHONY: run test test-fast coverage venv model system-deps browser-deps bench bench-peers bench-peers-venvs soak soak-long install uninstall clean
.PHONY: container-deps container-base container test-container

run: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/inferd --config $(CONFIG)

# Every suite: the container tests too (podman and a base image from the apt mirror, ~1 min the
# first time, then cached). Where they cannot be installed (not root, no apt), those tests skip and
# pytest's last lines name each suite that did not run and the command that runs it.
test: $(VENV)/.installed $(MODEL_DIR)/model.onnx system-deps browser-deps
	-@$(MAKE) --no-print-directory container-base || echo "make test: no container base image; the container tests will skip"
	$(BIN)/pytest -q

test-fast: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/pytest -q -m "not system and not slow"

# The suite under coverage.py with branch coverage of inferd/ (pyproject.toml [tool.coverage.*]),
# daemon subprocesses included; an HTML report in htmlcov/ and the total on one line. The tests that
# boot systemd or a container are left out: their inferd runs from a venv of its own, unmeasured.
COVERAGE_TESTS ?= -m "not system and not container"
coverage: $(VENV)/.installed $(MODEL_DIR)/model.onnx browser-deps
	rm -rf htmlcov .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q $(COVERAGE_TESTS); status=$$?; \
	$(BIN)/coverage combine -q && $(BIN)/coverage html -q && \
	echo "coverage of inferd/, lines and branches: $$($(BIN)/coverage report --format=total)% (htmlcov/index.html)"; \
	exit $$status

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[build,test]'
	touch $@

model: $(MODEL_DIR)/model.onnx

$(MODEL_DIR)/model.onnx: $(VENV)/.installed models/build.py models/onnx_graphs.py models/torch_legacy.py
	$(BIN)/python models/build.py efficientnet-lite0 --out $(MODEL_DIR)

# Installs Debian packages only when missing, and only as root; the tests that need them skip without.
define install-missing
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "not installed (the tests that need them will skip): $$missing"; fi
endef

system-deps:
	$(call install-missing,$(SYSTEM_PACKAGES))

browser-deps:
	$(call install-missing,$(BROWSER_PACKAGES))

container-deps:
	$(call install-missing,$(CONTAINER_PACKAGES))

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis htmlcov .coverage .coverage.* $(MODEL_DIR)/model.onnx

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

# Soak suite (issue 6): SOAK_SECONDS=600 make soak for a long run. soak-long (issue 21): 30 minutes,
# failing if RSS grows by 1% or more over the second half.
soak: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/python -m tests.soak --seconds $${SOAK_SECONDS:-120}

soak-long: $(VENV)/.installed $(MODEL_DIR)/model.onnx
	$(BIN)/python -m tests.soak --seconds $${SOAK_SECONDS:-1800} --max-growth 1

# Running as a service (issue 3), as root: PREFIX (/opt/inferd), SYSCONFDIR (/etc/inferd), UNITDIR
# (/etc/systemd/system) and VENV_PYTHON (/usr/bin/python3) may be overridden, e.g.
# `make install PREFIX=/srv/inferd`; `make uninstall PURGE=1` also removes an edited config.
install:
	sh systemd/install.sh

uninstall:
	sh systemd/uninstall.sh

# The container image (issue 15, deploy/container/README.md). Where no registry is reachable,
# `make container-base` makes the base from this machine's apt mirror (~45 s), and
# `make container CONTAINER_BASE=localhost/inferd-base:bookworm` builds on it.
CONTAINER_BASE ?= docker.io/library/debian:bookworm-slim
CONTAINER_IMAGE ?= localhost/inferd:latest
CONTAINER_CONTEXT := build/container/context
CONTAINERS_CONF_FILE := build/container/containers.conf
# podman with runc and rlimits within this host's hard limits (deploy/container/containers-conf.sh).
container-base container: export CONTAINERS_CONF = $(CURDIR)/$(CONTAINERS_CONF_FILE)

$(CONTAINERS_CONF_FILE): deploy/container/containers-conf.sh
	mkdir -p $(@D)
	sh $< > $@

container-base: container-deps $(CONTAINERS_CONF_FILE)
	podman image exists localhost/inferd-base:bookworm || sh deploy/container/base.sh localhost/inferd-base:bookworm

container: container-deps $(CONTAINERS_CONF_FILE)
	sh deploy/container/context.sh $(CONTAINER_CONTEXT)
	podman build --format docker --build-arg BASE=$(CONTAINER_BASE) -t $(CONTAINER_IMAGE) \
		-f deploy/container/Containerfile $(CONTAINER_CONTEXT)
	podman image ls $(CONTAINER_IMAGE)

# The container tests (about 2 minutes with a fresh base, under one with podman's cache). `make
# test` runs them only once the base image exists (after this target, or `make container-base`).
test-container: $(VENV)/.installed container-base
	$(BIN)/pytest -q -m container
