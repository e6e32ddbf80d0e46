# oneway — make help lists the targets.
SHELL := /bin/bash
BIN := $(CURDIR)/bin
MODULES := $(shell go list -m -f '{{.Dir}}' 2>/dev/null)
PROTOC_GEN_GO_VERSION := v1.36.12
GOTEST_FLAGS ?= -count=1 -timeout 15m

.PHONY: all build test test-race test-unit bench proto proto-check tidy check-tidy lint up down help clean

all: build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build oneway, reader and writer into ./bin
	@mkdir -p $(BIN)
	cd services/oneway && go build -o $(BIN)/oneway ./cmd/oneway
	cd services/reader && go build -o $(BIN)/reader ./cmd/reader
	cd services/writer && go build -o $(BIN)/writer ./cmd/writer

test: build ## run every test of every module (the README's test command)
	@set -e; for m in $(MODULES); do echo "== $$m"; (cd $$m && go test $(GOTEST_FLAGS) ./...); done

test-race: build ## the tests with -race
	@set -e; for m in $(MODULES); do echo "== $$m"; (cd $$m && go test -race $(GOTEST_FLAGS) ./...); done

bench: build ## initial-load benchmark against a COPY pipe (needs ONEWAY_BENCH_POSTGRES_URL or a local PostgreSQL)
	cd integration && go run ./cmd/bench -oneway $(BIN)/oneway -out $(CURDIR)/bench/results.jsonl

$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

proto: $(BIN)/protoc-gen-go ## regenerate proto/oneway/v1/*.pb.go (needs protoc)
	cd proto && PATH=$(BIN):$$PATH protoc --go_out=. --go_opt=paths=source_relative oneway/v1/*.proto

proto-check: proto ## fail when the committed *.pb.go differ from the .proto files
	git diff --exit-code -- proto/

tidy: ## go mod tidy in every module
	@for m in $(MODULES); do (cd $$m && go mod tidy); done

check-tidy: tidy ## fail when go.mod/go.sum are not tidy
	git diff --exit-code -- '*.mod' '*.sum'

lint: ## go vet every module
	@set -e; for m in $(MODULES); do (cd $$m && go vet ./...); done

up: build ## run the example pipeline with an embedded NATS (needs ONEWAY_SOURCE_URL, ONEWAY_TARGET_URL)
	$(BIN)/oneway up --config deploy/examples/invoices.yaml

clean:
	rm -rf $(BIN)/oneway $(BIN)/reader $(BIN)/writer
