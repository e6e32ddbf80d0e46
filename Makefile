# oneway — make help lists the targets.
SHELL := /bin/bash
BIN := $(CURDIR)/bin
MODULES := $(shell go list -m -f '{{.Dir}}' 2>/dev/null)
PROTOC_GEN_GO_VERSION := v1.36.12
# The timeout is per test binary: integration's takes about 12.5 minutes
# here, so 15 would leave a slower machine too little room.
GOTEST_FLAGS ?= -race -count=1 -timeout 25m
# Tests use this PostgreSQL server (override it, or set it in the environment).
export ONEWAY_TEST_POSTGRES_URL ?= $(PG_URL)/postgres?sslmode=disable

.PHONY: all images build demo demo-db verify test fuzz chaos bench permissions proto proto-check tidy check-tidy lint up help clean

all: build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build oneway, reader, writer, stager and differ into ./bin
	@mkdir -p $(BIN)
	cd services/oneway && go build -o $(BIN)/oneway ./cmd/oneway
	cd services/reader && go build -o $(BIN)/reader ./cmd/reader
	cd services/writer && go build -o $(BIN)/writer ./cmd/writer
	cd services/stager && go build -o $(BIN)/stager ./cmd/stager
	cd services/differ && go build -o $(BIN)/differ ./cmd/differ

test: build ## run every test of every module, with -race, then the fuzz targets briefly (the README's test command)
	@failed=""; for m in $(MODULES); do echo "== $$m"; (cd $$m && go test $(GOTEST_FLAGS) ./...) || failed="$$failed $$m"; done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi
	@$(MAKE) --no-print-directory fuzz

# Fuzz targets as module:package:target. A crash is written to the
# package's testdata/fuzz/<target>/, where plain `go test` replays it.
FUZZ_TARGETS := shared:./config:FuzzParse shared:./event:FuzzDecode shared:./event:FuzzRow \
  services/reader:./internal/debezium:FuzzDecode
# An execution count, not a duration: with Go 1.26 a duration's deadline
# can race the workers and fail the run with a bare "context deadline
# exceeded" and no failing input (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 60000x

fuzz: ## run each fuzz target for FUZZTIME (60000 inputs, seconds each): config parsing, batch and row decoding, Debezium events
	@for t in $(FUZZ_TARGETS); do IFS=: read -r mod pkg name <<< "$$t"; echo "== fuzz $$mod $$pkg $$name"; \
	  (cd $$mod && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -timeout 10m $$pkg) || exit 1; done

CHAOS_REPORT ?= $(CURDIR)/bench/chaos-report.md

chaos: build ## fault-injection suite: every TestChaos row, 30 s outages (~10 min); prints the table, writes bench/chaos-report.md
	@cd integration && ONEWAY_CHAOS_LONG=1 ONEWAY_CHAOS_REPORT=$(CHAOS_REPORT) go test -run 'TestChaos$$' -v -count=1 -timeout 30m . ; \
	status=$$?; echo; cat $(CHAOS_REPORT) 2>/dev/null; exit $$status

bench: build ## benchmarks against references in the same run: initial loads, incremental, writer scaling, cdc_steady, synthetic_cycle (needs ONEWAY_BENCH_POSTGRES_URL or a local PostgreSQL with wal_level=logical)
	cd integration && go run ./cmd/bench -oneway $(BIN)/oneway -out $(CURDIR)/bench/results.jsonl

$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

proto: $(BIN)/protoc-gen-go ## regenerate proto/oneway/v1/*.pb.go (needs protoc)
	cd proto && PATH=$(BIN):$$PATH protoc --go_out=. --go_opt=paths=source_relative oneway/v1/*.proto

images: ## build the service images (needs a Docker engine)
	@for svc in reader writer stager differ oneway; do docker build -f services/$$svc/Dockerfile -t oneway/$$svc:dev . || exit 1; done

permissions: ## rewrite deploy/nats/permissions.conf: `oneway permissions` for deploy/examples/invoices-staged.yaml
	cd services/oneway && go test ./internal/natsperm -run TestShippedFile -count=1 -update

proto-check: proto ## fail when the committed *.pb.go differ from the .proto files
	git diff --exit-code -- proto/

tidy: ## go mod tidy in every module
	@for m in $(MODULES); do (cd $$m && go mod tidy); done

check-tidy: tidy ## fail when go.mod/go.sum are not tidy
	git diff --exit-code -- '*.mod' '*.sum'

lint: ## go vet every module
	@set -e; for m in $(MODULES); do (cd $$m && go vet ./...); done

PG_URL ?= postgres://postgres:postgres@127.0.0.1:5432
DEMO_SOURCE_URL := $(PG_URL)/oneway_demo_source
DEMO_TARGET_URL := $(PG_URL)/oneway_demo_target

demo: build ## the built-in demo: oneway up with no config (SQLite SoR and target, data in ./data, Ctrl-C stops)
	$(BIN)/oneway up

demo-db: ## (re)create the example's databases oneway_demo_source/_target on $(PG_URL); resets ./data (the built-in demo's files too)
	psql "$(PG_URL)/postgres" -q -v ON_ERROR_STOP=1 \
	  -c 'DROP DATABASE IF EXISTS oneway_demo_source WITH (FORCE)' -c 'CREATE DATABASE oneway_demo_source' \
	  -c 'DROP DATABASE IF EXISTS oneway_demo_target WITH (FORCE)' -c 'CREATE DATABASE oneway_demo_target'
	psql "$(DEMO_SOURCE_URL)" -q -v ON_ERROR_STOP=1 -f deploy/examples/invoices-source.sql
	psql "$(DEMO_TARGET_URL)" -q -v ON_ERROR_STOP=1 -f deploy/examples/invoices-target.sql
	rm -rf ./data

up: build ## run the example pipeline (embedded NATS, data in ./data, admin on 127.0.0.1:8080)
	ONEWAY_SOURCE_URL="$${ONEWAY_SOURCE_URL:-$(DEMO_SOURCE_URL)}" ONEWAY_TARGET_URL="$${ONEWAY_TARGET_URL:-$(DEMO_TARGET_URL)}" \
	  $(BIN)/oneway up --config deploy/examples/invoices.yaml --admin-addr 127.0.0.1:8080

verify: build ## compare the example's source and target
	ONEWAY_SOURCE_URL="$${ONEWAY_SOURCE_URL:-$(DEMO_SOURCE_URL)}" ONEWAY_TARGET_URL="$${ONEWAY_TARGET_URL:-$(DEMO_TARGET_URL)}" \
	  $(BIN)/oneway verify --config deploy/examples/invoices.yaml

clean:
	rm -rf $(BIN)/oneway $(BIN)/reader $(BIN)/writer $(BIN)/stager $(BIN)/differ
