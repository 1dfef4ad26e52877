# gatewayd — the two commands of the README:
#   make run    build everything and run the daemon with config/gatewayd.toml
#   make test   build everything and run all tests (SQLite and the local PostgreSQL)

CARGO ?= cargo
PLUGINS := signaling fault-test ivr ivr-menu
WASM_DIR := $(or $(CARGO_TARGET_DIR),target)/wasm32-wasip2/plugin
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: run test plugins build setup bench bench-ivr check lint

setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Plugins are wasm32-wasip2 components, copied to build/plugins/<name>.wasm.
plugins: setup
	$(CARGO) build --profile plugin --target wasm32-wasip2 $(addprefix -p gatewayd-,$(PLUGINS))
	@mkdir -p build/plugins
	@for p in $(PLUGINS); do cp $(WASM_DIR)/gatewayd_$$(echo $$p | tr - _).wasm build/plugins/$$p.wasm; done

build: plugins
	$(CARGO) build --release -p gatewayd -p gatewayd-load

run: build
	$(BIN_DIR)/gatewayd run --config config/gatewayd.toml

check: build
	$(BIN_DIR)/gatewayd check --config config/gatewayd.toml

test: build
	$(CARGO) test --release --workspace --exclude gatewayd-signaling --exclude gatewayd-fault-test --exclude gatewayd-ivr --exclude gatewayd-ivr-menu --exclude gatewayd-ivr-protocol
	$(CARGO) test --release -p gatewayd-signaling --lib
	$(CARGO) test --release -p gatewayd-ivr-protocol --lib

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: build
	./bench/signaling.sh

# IVR media benchmark: concurrent echo calls (docs/benchmarks.md).
bench-ivr: build
	./bench/ivr.sh
