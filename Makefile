# The two commands of the README: `make lab` and `make test`. Both bootstrap first.
VENV := .venv
BIN := $(VENV)/bin
export PYTHONDONTWRITEBYTECODE := 1
# Jupyter refuses to start as root unless told; containers and CI machines often are root.
JUPYTER_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test image bootstrap lint typecheck pytest unit integration notebooks bench down clean help

help:
	@echo "make lab        bootstrap, start the local platform, open JupyterLab on notebooks/"
	@echo "make test       bootstrap, then ruff, mypy and the whole test suite"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make image      build the services image for the kube target (then: ottlab image load)"
	@echo "make down       stop the platform (ottlab down)"

bootstrap:
	@bash scripts/bootstrap.sh

lab: bootstrap
	$(BIN)/ottlab up
	$(BIN)/ottlab status
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $(JUPYTER_ROOT)

test: bootstrap lint typecheck pytest

lint:
	$(BIN)/ruff check labkit ott tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest

# The services image ottlab/ott-services:<version> with docker or podman (labkit/targets/kube/image.py).
image: bootstrap
	$(BIN)/ottlab image build

unit: bootstrap
	$(BIN)/pytest tests/unit

integration: bootstrap
	$(BIN)/pytest tests/integration

notebooks: bootstrap
	$(BIN)/pytest tests/notebooks

bench: bootstrap
	@set -e; found=0; for b in bench/bench_*.py; do [ -e "$$b" ] || continue; found=1; \
	  echo "== $$b"; $(BIN)/python "$$b"; done; [ $$found = 1 ] || echo "no benchmarks yet (see bench/README.md)"

down:
	$(BIN)/ottlab down

clean: down
	$(BIN)/ottlab down --purge
	rm -rf reports .bootstrap
