# barnacle: continuous backup and PITR for Stolon-managed PostgreSQL.
# Run `make help` for the targets. Recipes longer than two lines live in scripts/.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BIN       := bin/barnacle
FUZZ_TIME ?= 30s
# The whole suite takes about 11-13 minutes on 2 cores (test/e2e 8-10, its
# scenarios four at a time); the timeout only stops a hung test.
TEST_TIMEOUT ?= 20m

.PHONY: help build test test-unit test-e2e bench fuzz lint fmt tidy-check cover demo clean versitygw kube-apiserver

help: ## List the targets
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build bin/barnacle with the version stamped in
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/barnacle

test: versitygw kube-apiserver ## Run every test: unit, integration (real PostgreSQL 15 + etcd + S3 + kube-apiserver) and e2e
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

versitygw: ## Build the S3 server the tests run against, once, into ~/.cache/barnacle
	scripts/versitygw.sh

kube-apiserver: ## Build the Kubernetes API server the kubekeeper tests run against, once, into ~/.cache/barnacle
	scripts/kube-apiserver.sh

test-unit: versitygw kube-apiserver ## Only the tests that need no PostgreSQL (embedded etcd is fine), for a quick loop
	$(GO) test -race -short -count=1 . ./pkg/... ./agent/... ./coordinator/... ./cmd/...

test-e2e: ## Only the black-box scenarios in test/e2e (built binary, agents as processes)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/

bench: ## Run the benchmarks
	scripts/bench.sh

fuzz: ## Run every fuzz target for FUZZ_TIME (default 30s)
	FUZZ_TIME=$(FUZZ_TIME) scripts/fuzz.sh

lint: ## gofmt, go vet and the layout rules
	scripts/lint.sh

fmt: ## Format the code
	gofmt -w $$(git ls-files '*.go')

tidy-check: ## Fail if go mod tidy would change go.mod or go.sum
	$(GO) mod tidy -diff

cover: ## Test with coverage and print the total
	$(GO) test -count=1 -coverprofile=coverage.out ./... && $(GO) tool cover -func=coverage.out | tail -1

demo: ## Start a local etcd, a primary and two standbys with agents, back up, drill, fail over, restore
	scripts/demo.sh

clean: ## Remove build output
	rm -rf bin coverage.out
