# dropsync: `make all` builds ./server and ./client (release), `make test` runs
# every test, `make demo` syncs a demo folder (`make demo-secure`: the same in
# secure mode, keys and enrolment included), `make fuzz` fuzzes the parsers.

CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: all clean test demo demo-secure fuzz bench valgrind

# Installed by copy to a temp name and rename, so `make all` works while
# ./server or ./client runs (a copy onto a running program fails with
# "Text file busy"; a rename replaces the name and the program keeps its file).
all:
	$(CARGO) build --release --locked -p dropsync-server -p dropsync-client
	cp target/release/server ./.server.new && mv -f ./.server.new ./server
	cp target/release/client ./.client.new && mv -f ./.client.new ./client

# `make install PREFIX=/usr/local` (the default; DESTDIR=... for packaging):
# the release binaries as $(PREFIX)/bin/dropsync-server and dropsync-client,
# the systemd units (contrib/systemd, pointed at those binaries) under
# $(UNITDIR), and the README under $(DOCDIR). `install-files` does the same
# with the binaries SERVER_BIN and CLIENT_BIN as they are, without building.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/dropsync
SERVER_BIN ?= ./server
CLIENT_BIN ?= ./client
UNITS = dropsync-server.service dropsync-client@.service

.PHONY: install install-files
install: all
	$(MAKE) --no-print-directory install-files

install-files:
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(DOCDIR)"
	install -m 0755 "$(SERVER_BIN)" "$(DESTDIR)$(BINDIR)/dropsync-server"
	install -m 0755 "$(CLIENT_BIN)" "$(DESTDIR)$(BINDIR)/dropsync-client"
	for u in $(UNITS); do \
	  sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' "contrib/systemd/$$u" > "$(DESTDIR)$(UNITDIR)/$$u" && \
	  chmod 0644 "$(DESTDIR)$(UNITDIR)/$$u" || exit 1; \
	done
	install -m 0644 README.md "$(DESTDIR)$(DOCDIR)/README.md"

clean:
	$(CARGO) clean
	rm -rf ./server ./client fuzz/target

# The README's test command; .ci/run runs exactly this. Last, the valgrind
# scenario (see below), so memory errors fail the tests too.
test:
	$(CARGO) build --locked --workspace --bins
	$(MAKE) --no-print-directory sans-io
	$(CARGO) test --locked --workspace
	$(MAKE) --no-print-directory valgrind

# dropsync-proto and dropsync-core read no clock, and the core opens no
# socket or file and starts no thread: clippy's disallowed lists (their
# clippy.toml) as errors, on the libraries themselves.
.PHONY: sans-io
sans-io:
	$(CARGO) clippy --locked -p dropsync-proto -p dropsync-core --lib -- -D clippy::disallowed_methods -D clippy::disallowed_types

# The deterministic simulation (dropsync-sim): SEEDS seeds from FIRST on
# every core, printing the rate; `make sim SEED=n` replays one seed with its
# event log. INSTANCES=2 or 3 runs them with that many server instances
# sharing a database and a bucket (issue 18). `make test` runs the first
# thousand, and the first 1000 with 3 instances and 500 with 2.
# (SEEDS and FIRST are shared with `make soak`, whose defaults differ.)
SIM_SEEDS = $(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),10000)
SIM_FIRST = $(if $(FIRST),$(FIRST),0)
SIM_INSTANCES = $(if $(INSTANCES),--instances $(INSTANCES),)
.PHONY: sim
sim:
	$(CARGO) build --release --locked -p dropsync-sim
	@if [ -n "$(SEED)" ]; then ./target/release/dropsync-sim --seed $(SEED) --log $(SIM_INSTANCES); \
	else ./target/release/dropsync-sim --seeds $(SIM_SEEDS) --first $(SIM_FIRST) $(SIM_INSTANCES); fi

demo: all
	./scripts/demo.sh

# Secure mode (scripts/demo-secure.sh): the server's and the clients' keys,
# `server enroll`, clients with --server-fingerprint, a file from one to the
# other over TLS, a stranger and a plaintext client refused, a revoke.
demo-secure: all
	./scripts/demo-secure.sh

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets this stable toolchain
# accept them. Each target runs for FUZZ_SECONDS.
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run frame_parser -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run metadata_parser -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run enrolment_list -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run identity_file -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run tls_handshake -- -max_total_time=$(FUZZ_SECONDS)

bench:
	$(MAKE) --no-print-directory bench-micro
	$(MAKE) --no-print-directory bench-table

# Micro-benchmarks of the proto and core crates (parser, META-DATA at
# 1,000,000 entries, lock contention).
bench-micro:
	$(CARGO) bench --locked -p dropsync-proto -p dropsync-core

# The server, then a client (each with the other unwrapped), under valgrind
# through upload, fan-out, delete and graceful shutdown; any error fails the run.
VALGRIND = valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --log-file=$(CURDIR)/target/valgrind-%p.log
valgrind:
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(CARGO) build --locked --workspace --bins
	rm -f target/valgrind-*.log
	DROPSYNC_WRAPPER="$(VALGRIND)" $(CARGO) test --locked -p dropsync-server --test lifecycle -- sigterm_shuts_down_cleanly_and_persists
	DROPSYNC_WRAPPER="$(VALGRIND)" $(CARGO) test --locked -p dropsync-client --test sync -- sigterm_exits_zero_and_keeps_the_metadata
	@grep -h "ERROR SUMMARY" target/valgrind-*.log

# The submission archive, dist/dropsync.tar.gz (scripts/dist.sh): the tracked
# sources, Makefile, README, docs, scripts and contrib, without build outputs,
# large files or version-control files.
.PHONY: dist wireshark
dist:
	bash scripts/dist.sh

# The Wireshark dissector (contrib/wireshark/dropsync.lua) against a live
# capture of a real session; `make test` runs it too. Needs tshark, and root
# to capture.
wireshark:
	command -v tshark >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark)
	$(CARGO) build --locked --workspace --bins
	$(CARGO) test --locked -p dropsync-server --test wireshark -- --nocapture

# Issue 8's benchmark: --parallel 1 vs 8 on loopback and at 20 ms RTT.
.PHONY: bench-parallel
bench-parallel:
	bash scripts/bench-parallel.sh

# Randomized convergence testing with fault injection (dropsync-soak): the
# real server and 2-5 clients, random changes, kill -9, SIGSTOP, --once,
# then six invariants. `make test` runs a fixed set of seeds; this runs
# SEEDS seeds from FIRST (default: from the clock) with STEPS steps each, for
# long hunts. SEED=s replays one seed (as every failure report says), with
# its operation log echoed. SECURE=1 runs it in secure mode (TLS, every
# client enrolled and pinned), so that the faults hit TLS connections too.
# INSTANCES=N (e.g. 3) runs N server instances on one PostgreSQL catalog and
# one S3 bucket (a throwaway cluster and moto, as the server's tests use),
# clients spread over them, with kill -9 of one instance and a PostgreSQL
# restart among the faults; `make test` runs a fixed set of those too.
SEEDS ?= 20
.PHONY: soak
soak:
	$(CARGO) build --locked --workspace --bins
	if [ -n "$(SEED)" ]; then \
	  DROPSYNC_SOAK_SECURE=$(SECURE) DROPSYNC_SOAK_INSTANCES=$(INSTANCES) DROPSYNC_SOAK_SEED=$(SEED) DROPSYNC_SOAK_STEPS=$(STEPS) $(CARGO) test --locked -p dropsync-soak --test convergence -- --ignored --exact replay --nocapture; \
	else \
	  DROPSYNC_SOAK_SECURE=$(SECURE) DROPSYNC_SOAK_INSTANCES=$(INSTANCES) DROPSYNC_SOAK_SEEDS=$(SEEDS) DROPSYNC_SOAK_FIRST=$(FIRST) DROPSYNC_SOAK_STEPS=$(STEPS) $(CARGO) test --locked -p dropsync-soak --test convergence -- --ignored --exact soak --nocapture; \
	fi

# Issues 9 and 19's benchmark table (bench/README.md): the real server and
# clients on loopback beside rsync, end to end, latency, fan-out to 10,000
# sessions, memory, a rename and a copy, 1,000,000 files, a git checkout and
# B1/B3 on a real disk (a loop-mounted ext4 image: needs root, as raising
# kernel.pid_max for the fan-out does; both are put back). Prints a markdown
# table, writes bench/results/latest.json and a timestamped copy.
# BENCH_RUNS=N (default 3), BENCH_QUICK=1 for small sizes. Bounded: the
# binary's watchdog stops everything after BENCH_DEADLINE s (default 3000),
# and this timeout (60 s more) backs it up.
BENCH_BIN = $(or $(CARGO_TARGET_DIR),target)/release
.PHONY: bench-micro bench-table
bench-table:
	command -v rsync >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync)
	$(CARGO) build --release --locked -p dropsync-server -p dropsync-client -p dropsync-bench
	ulimit -n $$(ulimit -Hn) 2>/dev/null || true; \
	timeout --foreground -k 10 3060 $(BENCH_BIN)/dropsync-bench --server $(BENCH_BIN)/server --client $(BENCH_BIN)/client --out bench/results
