# The two commands a new user needs: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
NPM_STAMP := node_modules/.package-lock.json

.PHONY: deps npm-deps sys-deps test typecheck lint unit demo bench build clean faults

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
	npx vitest run

test: deps typecheck lint unit

demo: deps
	bash hack/demo.sh

bench: deps
	npx tsx bench/run.ts

clean:
	rm -rf dist .cache
