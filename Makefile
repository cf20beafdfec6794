# PrlFuse: `make demo` sets up and runs the main job on a generated demo bundle; `make test` runs every test.
CONFIG ?= Release
PREFIX ?= /usr/local
DOTNET ?= dotnet

.PHONY: all setup build test demo publish install uninstall bench bench-readme soak fuzz fuzz-nbd clean

all: build

setup:
	bash scripts/setup.sh

build:
	$(DOTNET) build PrlFuse.sln -c $(CONFIG) -nologo -v quiet

test: setup
	bash scripts/test.sh

demo: setup
	bash scripts/demo.sh

# One native executable (Native AOT, linked with gcc): it runs copied alone into any folder, and starts without a
# runtime to load or code to compile, which is most of the time to a mounted disk and of the daemon's memory.
publish:
	$(DOTNET) publish src/PrlFuse.Cli -c Release -r linux-x64 -p:PublishAot=true -p:CppCompilerAndLinker=gcc -p:DebugType=none -o artifacts/publish -nologo -v quiet

# The binary, the manual page prlfuse(1) and bash completion; `make uninstall` removes exactly these.
INSTALLED = $(PREFIX)/bin/prlfuse $(PREFIX)/share/man/man1/prlfuse.1 $(PREFIX)/share/bash-completion/completions/prlfuse
install: publish
	install -D -m 0755 artifacts/publish/prlfuse $(PREFIX)/bin/prlfuse
	install -D -m 0644 docs/prlfuse.1 $(PREFIX)/share/man/man1/prlfuse.1
	install -D -m 0644 scripts/prlfuse.bash-completion $(PREFIX)/share/bash-completion/completions/prlfuse
	@echo "installed $(PREFIX)/bin/prlfuse, its manual page and bash completion"

uninstall:
	rm -f $(INSTALLED)
	@echo "removed $(INSTALLED)"

bench: setup
	bash scripts/bench.sh

# The README's performance table from the last `make bench` (bench/results/fuse.json).
bench-readme:
	python3 bench/fuse/readme.py bench/results/fuse.json README.md

# A long mixed load with verification: `make soak DURATION=3600`.
DURATION ?= 600
soak: setup
	bash scripts/soak.sh $(DURATION)

# Long mutation-fuzzer run: make fuzz [FUZZ_FORMAT=parallels|qcow2|qed] [FUZZ_SEED=1] [FUZZ_COUNT=N]; N is
# 200000 for parallels and 100000 for qcow2 and qed unless given (the long run; CI runs a share of each)
fuzz: setup
	FUZZ_FORMAT=$(or $(FUZZ_FORMAT),parallels) bash scripts/fuzz.sh $(or $(FUZZ_SEED),1) $(FUZZ_COUNT)

# Long malformed-client run against `prlfuse serve`: make fuzz-nbd [FUZZ_SEED=1] [FUZZ_COUNT=100000]
fuzz-nbd: setup
	bash scripts/fuzz-nbd.sh $(or $(FUZZ_SEED),1) $(or $(FUZZ_COUNT),100000)

clean:
	rm -rf artifacts .demo src/*/bin src/*/obj tests/*/bin tests/*/obj bench/*/bin bench/*/obj
