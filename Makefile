# phpfpm-manager: one command each for the things people do.
#   make run    install what is missing, build, run in zero-config mode
#   make test   install what is missing, run the whole test suite
#   make bench  run the benchmarks (results go in docs/BENCHMARKS.md by hand)
#   make lint   rustfmt and clippy, as CI runs them

CARGO ?= cargo

.PHONY: run test bench lint deps-run deps-test

deps-run:
	@scripts/install-deps.sh run

deps-test:
	@scripts/install-deps.sh test

run: deps-run
	$(CARGO) run --release --bin phpfpm-manager -- run

test: deps-test
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps-test
	$(CARGO) bench -p phpfpm-manager --bench collect
	$(CARGO) bench -p phpfpm-manager --bench supervise
	$(CARGO) bench -p phpfpm-manager --bench realload
	$(CARGO) bench -p phpfpm-manager --bench handover
	$(CARGO) bench -p phpfpm-manager --bench api
	$(CARGO) bench -p fpm-kernel --bench kernel
	$(CARGO) bench -p fpm-storage
	$(CARGO) run -p fpm-autoscale --release --example simulate -- --trace all --seed 1
