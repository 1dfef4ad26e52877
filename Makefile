# gatewayd — the two commands of the README:
#   make run    build everything and run the daemon with config/gatewayd.toml
#   make test   build everything and run all tests (SQLite and the local PostgreSQL)

CARGO ?= cargo
PLUGINS := signaling fault-test chat rooms
WASM_DIR := $(or $(CARGO_TARGET_DIR),target)/wasm32-wasip2/plugin
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: run test plugins build setup bench check lint

setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Plugins are wasm32-wasip2 components, copied to build/plugins/<name>.wasm.
plugins: setup
	$(CARGO) build --profile plugin --target wasm32-wasip2 $(addprefix -p gatewayd-,$(PLUGINS))
	@mkdir -p build/plugins
	@for p in $(PLUGINS); do cp $(WASM_DIR)/gatewayd_$$(echo $$p | tr - _).wasm build/plugins/$$p.wasm; done
	# A second version of fault-test, for hot-reload tests and benchmarks.
	$(CARGO) build --profile plugin --target wasm32-wasip2 -p gatewayd-fault-test --features v2
	@cp $(WASM_DIR)/gatewayd_fault_test.wasm build/plugins/fault-test-v2.wasm

build: plugins
	$(CARGO) build --release -p gatewayd -p gatewayd-load

run: build
	$(BIN_DIR)/gatewayd run --config config/gatewayd.toml

check: build
	$(BIN_DIR)/gatewayd check --config config/gatewayd.toml

test: build
	$(CARGO) test --release --workspace --exclude gatewayd-signaling --exclude gatewayd-fault-test --exclude gatewayd-chat --exclude gatewayd-rooms
	$(CARGO) test --release -p gatewayd-signaling --lib
	$(CARGO) test --release -p gatewayd-chat --lib
	$(CARGO) test --release -p gatewayd-rooms --lib

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: build
	./loadtool/scripts/signaling.sh
	./loadtool/scripts/chat.sh
	./loadtool/scripts/reload.sh
