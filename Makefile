# guestbackup — see README.md. `make demo` and `make test` work on a fresh Debian machine (as root).
SHELL := /bin/bash
APT_PKGS := qemu-utils qemu-system-x86 qemu-system-common libnbd-bin nbdkit squashfs-tools squashfuse fuse3 zstd acl attr tar fuse2fs e2fsprogs perl tmux lzop
# Commands the packages above provide; deps installs the packages when any is missing.
NEEDED_CMDS := qemu-img qemu-nbd qemu-io qemu-system-x86_64 nbdinfo nbdcopy nbdkit mksquashfs unsquashfs squashfuse fusermount3 zstd setfacl getfattr tar fuse2fs mkfs.ext4 fallocate prove qemu-storage-daemon tmux lzop

.PHONY: deps apt npm build typecheck lint format-check unit test demo bench mutation deb deb-tools clean

deps: apt npm

apt:
	@missing=""; for c in $(NEEDED_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi

npm: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# dist/: the library (tsc, what package.json exports) and dist/bundle/, the CLI as one esbuild
# bundle with a chunk per command (scripts/bundle.ts), which bin/guestbackup runs.
build: npm
	rm -rf dist
	npx tsc -p tsconfig.build.json
	node --import tsx scripts/bundle.ts

typecheck: npm
	npx tsc -p tsconfig.json --noEmit

lint: npm
	npx eslint .

format-check: npm
	npx prettier --check .

unit: npm
	npm test

test: deps typecheck lint format-check build
	npm test

demo: deps build
	bash scripts/demo.sh

bench: deps build
	npm run bench

# dist-deb/guestbackup_<version>_all.deb, offline and reproducible (scripts/build-deb.sh), then
# lintian on it. The package's build compiles on its own: it does not use or change dist/.
deb: npm deb-tools
	bash scripts/build-deb.sh
	lintian --tag-display-limit 0 dist-deb/guestbackup_$$(node -p 'require("./package.json").version')_all.deb

# Only for `make deb`: dpkg-deb comes with dpkg, lintian is installed when missing.
deb-tools:
	@command -v lintian >/dev/null 2>&1 || { \
	  echo "installing lintian"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends lintian >/dev/null; }

# Deletes one security rule at a time and checks a test fails (not part of `make test`).
mutation: deps
	node --import tsx scripts/mutation.ts

clean:
	rm -rf dist .demo dist-deb
