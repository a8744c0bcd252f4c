# dropsync: `make all` builds ./server and ./client (release), `make test` runs
# every test, `make demo` syncs a demo folder, `make fuzz` fuzzes the parsers.

CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: all clean test demo fuzz bench valgrind

all:
	$(CARGO) build --release --locked -p dropsync-server -p dropsync-client
	cp target/release/server ./server
	cp target/release/client ./client

clean:
	$(CARGO) clean
	rm -rf ./server ./client fuzz/target

# The README's test command; .ci/run runs exactly this.
test:
	$(CARGO) build --locked --workspace --bins
	$(CARGO) test --locked --workspace

demo: all
	./scripts/demo.sh

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets this stable toolchain
# accept them. Each target runs for FUZZ_SECONDS.
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run frame_parser -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run metadata_parser -- -max_total_time=$(FUZZ_SECONDS)

bench:
	$(CARGO) bench --locked -p dropsync-proto -p dropsync-core
