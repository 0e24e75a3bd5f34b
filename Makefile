# The two commands a new user needs: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
NPM_STAMP := node_modules/.package-lock.json

.PHONY: deps npm-deps sys-deps test typecheck lint unit demo bench build clean faults fuzz test-spdk

deps: sys-deps npm-deps

sys-deps:
	bash hack/install-deps.sh

# Installs from the lock file only when it changed since the last install. (`npm install`,
# not `npm ci`: npm 11 leaves other platforms' optional packages out of the lock, which
# `npm ci` then rejects as out of sync.)
npm-deps: $(NPM_STAMP)
$(NPM_STAMP): package-lock.json
	npm install --no-audit --no-fund
	@touch $(NPM_STAMP)

build: npm-deps
	npx tsc -p tsconfig.build.json

typecheck: npm-deps
	npx tsc -p tsconfig.json --noEmit

lint: npm-deps
	npx eslint .

unit: npm-deps
	@mkdir -p .cache
	npx vitest run --reporter=default --reporter=json --outputFile=.cache/vitest.json
	@node -e 'const r=require("./.cache/vitest.json"); console.log(`$${r.numPassedTests} passed, $${r.numFailedTests} failed, $${r.numPendingTests + r.numTodoTests} skipped`)'

test: deps typecheck lint unit

demo: deps
	bash hack/demo.sh

bench: deps
	npx tsx bench/run.ts

# Long fault-injection run: every kill point, longer restart delays. FAULT_SCALE scales the
# number of scenarios; FAULT_SEED=<n> replays a run (each run prints its seed).
FAULT_SCALE ?= 5
FAULT_MAX_DELAY_MS ?= 500
faults: npm-deps
	FAULT_SCALE=$(FAULT_SCALE) FAULT_MAX_DELAY_MS=$(FAULT_MAX_DELAY_MS) npx vitest run --testTimeout=0 test/faults

# Long fuzz run: FUZZ_RUNS cases per property, FUZZ_VALIDATE outputs through virt-xml-validate.
FUZZ_RUNS ?= 20000
FUZZ_VALIDATE ?= 20
fuzz: npm-deps
	FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_VALIDATE=$(FUZZ_VALIDATE) npx vitest run --testTimeout=0 test/fuzz

# Opt-in: the agent, recovery, migration and the recordings against real spdk_tgt binaries
# (SPDK_TGT, and SPDK_TGT_OLD for a second version). `make test` never needs SPDK.
test-spdk: npm-deps
	@if [ -z "$$SPDK_TGT" ]; then echo 'test-spdk: set SPDK_TGT=/path/to/spdk_tgt (and SPDK_TGT_OLD=... for a second version)'; exit 2; fi
	npx vitest run --testTimeout=180000 test/spdk

clean:
	rm -rf dist .cache
