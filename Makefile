# gatewayd — the two commands of the README:
#   make run    build everything and run the daemon with config/gatewayd.toml
#   make test   build everything and run all tests (SQLite and the local PostgreSQL)

CARGO ?= cargo
PLUGINS := signaling fault-test chat rooms ivr ivr-menu echo stt-deepgram tts-elevenlabs tts-openai legacy-protocol twilio stt-pocketsphinx tts-flite
WASM_DIR := $(or $(CARGO_TARGET_DIR),target)/wasm32-wasip2/plugin
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/release
# Autobahn|Testsuite (WebSocket conformance, tests/tests/autobahn.rs) needs Python 2.7: the
# pyenv interpreter of these machines, with a virtualenv outside the clone.
PYTHON27 ?= /root/.pyenv/versions/2.7.18/bin/python
AUTOBAHN_VENV ?= /var/cache/gatewayd-ci/autobahn-venv
# Twilio's helper library (the signature cross-check of tests/tests/telephony.rs).
TWILIO_VENV ?= /var/cache/gatewayd-ci/twilio-venv
# cargo-fuzz (make fuzz): every target for FUZZ_SECONDS, built into its own target directory.
FUZZ_SECONDS ?= 300
FUZZ_TARGET_DIR ?= /var/cache/gatewayd-fuzz
FUZZ_SANITIZER ?= address

.PHONY: run test plugins build setup test-setup bench bench-ivr bench-speech bench-offline-speech bench-twilio check lint fuzz

# Offline speech engines (scripts/speech/): C sources and models from the package registries,
# cached outside the clone; models installed under build/models/<engine> (config/gatewayd.toml's
# data_dir). A systemd install copies them to /usr/share/gatewayd/models (README).
SPEECH_CACHE ?= /var/cache/gatewayd-ci/speech
MODELS_DIR := build/models

# What building needs on a fresh machine: the Wasm target, libopus (Opus codec), the C
# toolchain for Wasm (clang-16, wasi-libc) and the offline speech engines' sources and models.
setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@pkg-config --exists opus 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libopus-dev pkg-config; }
	@scripts/speech/toolchain.sh
	@GATEWAYD_SPEECH_CACHE=$(SPEECH_CACHE) scripts/speech/pocketsphinx.sh $(MODELS_DIR)/pocketsphinx
	@GATEWAYD_SPEECH_CACHE=$(SPEECH_CACHE) scripts/speech/flite.sh $(MODELS_DIR)/flite

# What the tests need besides the build: Chromium + chromedriver (rooms browser test),
# systemd-analyze (unit checks), a running local PostgreSQL (tests on both backends),
# Autobahn|Testsuite's wstest (pinned in tests/autobahn/requirements.txt; reinstalled only
# when the pins change), and for the chaos tests the PostgreSQL server binaries (initdb,
# pg_ctl: a server of the test's own), runuser and mount (util-linux: run them as `postgres`,
# mount a small tmpfs; run as root), and Twilio's helper library from PyPI (telephony
# signature cross-check; pinned in tests/assets/telephony/requirements.txt).
test-setup:
	@test -x $(PYTHON27) || { echo "Python 2.7 ($(PYTHON27)) is required for Autobahn|Testsuite; set PYTHON27" >&2; exit 1; }
	@cmp -s tests/autobahn/requirements.txt $(AUTOBAHN_VENV)/requirements.txt && test -x $(AUTOBAHN_VENV)/bin/wstest || { \
		echo "installing Autobahn|Testsuite into $(AUTOBAHN_VENV)"; \
		$(PYTHON27) -m virtualenv --version >/dev/null 2>&1 || $(PYTHON27) -m pip install -q --disable-pip-version-check 'virtualenv<20'; \
		rm -rf $(AUTOBAHN_VENV) && $(PYTHON27) -m virtualenv -q $(AUTOBAHN_VENV) && \
		$(AUTOBAHN_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r tests/autobahn/requirements.txt && \
		$(AUTOBAHN_VENV)/bin/wstest --autobahnversion >/dev/null && \
		cp tests/autobahn/requirements.txt $(AUTOBAHN_VENV)/requirements.txt; }
	@cmp -s tests/assets/telephony/requirements.txt $(TWILIO_VENV)/requirements.txt && test -x $(TWILIO_VENV)/bin/python || { \
		echo "installing Twilio's helper library into $(TWILIO_VENV)"; \
		rm -rf $(TWILIO_VENV) && python3 -m venv $(TWILIO_VENV) && \
		$(TWILIO_VENV)/bin/pip install -q --disable-pip-version-check -r tests/assets/telephony/requirements.txt && \
		cp tests/assets/telephony/requirements.txt $(TWILIO_VENV)/requirements.txt; }
	@{ command -v chromium && command -v chromedriver && command -v systemd-analyze; } >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver systemd; }
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v runuser && command -v mount; } >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql util-linux mount; }
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start || true
	@for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; pg_isready -h 127.0.0.1 -p 5432

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

test: build test-setup
	GATEWAYD_WSTEST=$(AUTOBAHN_VENV)/bin/wstest GATEWAYD_TWILIO_PYTHON=$(TWILIO_VENV)/bin/python $(CARGO) test --release --workspace --exclude gatewayd-signaling --exclude gatewayd-fault-test --exclude gatewayd-chat --exclude gatewayd-rooms --exclude gatewayd-ivr --exclude gatewayd-ivr-menu --exclude gatewayd-ivr-protocol --exclude gatewayd-echo --exclude gatewayd-legacy-protocol
	$(CARGO) test --release -p gatewayd-signaling --lib
	$(CARGO) test --release -p gatewayd-chat --lib
	$(CARGO) test --release -p gatewayd-rooms --lib
	$(CARGO) test --release -p gatewayd-ivr-protocol --lib

# Fuzz every target of fuzz/ for FUZZ_SECONDS each (needs cargo-fuzz; the stable toolchain
# runs it with RUSTC_BOOTSTRAP=1). New inputs land in fuzz/corpus/<target>/, crashes in
# fuzz/artifacts/<target>/. FUZZ_SANITIZER=none builds without AddressSanitizer.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
		RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) nice -n 15 cargo fuzz run -s $(FUZZ_SANITIZER) $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 || exit 1; \
	done

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: build
	./loadtool/scripts/signaling.sh
	./loadtool/scripts/chat.sh
	./loadtool/scripts/reload.sh
	./loadtool/scripts/rooms.sh

# IVR media benchmark: concurrent echo calls (docs/benchmarks.md).
bench-ivr: build
	./loadtool/scripts/ivr.sh

# Speech benchmark: concurrent transcribed calls with a spoken reply, fake vendors (docs/benchmarks.md).
bench-speech: build
	./loadtool/scripts/speech.sh

# Offline speech: concurrent calls transcribed by PocketSphinx and spoken to by Flite inside
# the daemon (docs/benchmarks.md).
bench-offline-speech: build
	./loadtool/scripts/offline-speech.sh

# Twilio Media Streams echo at 100, 500 and 1,000 calls (docs/benchmarks.md); TWILIO_BENCH_TARGET=python
# runs the same simulator against the Python baseline.
bench-twilio: build
	./loadtool/scripts/twilio.sh 100,500,1000 30
