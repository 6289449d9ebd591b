# cloudlet: VM synthesis with early start.
#   make deps    install the Debian packages cloudlet needs (idempotent; root or sudo)
#   make demo    build the test guest, make a base, resume it and print time-to-first-response
#   make test    run all tests (real QEMU guests, FUSE mounts and HTTP servers)

GO       ?= go
BUILD    := build
BIN      := $(BUILD)/cloudlet
# The Debian packages the project uses, at run time and to build the test guest.
DEB_PKGS := qemu-system-x86 qemu-utils fuse3 busybox-static cpio kmod e2fsprogs libvirt-dev \
            libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-block-extra debootstrap \
            pkg-config gcc ca-certificates xz-utils slirp4netns docker-registry
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build guest demo test test-short vet bench clean

all: build

# Installs only what is missing, so a second run changes nothing and needs no network.
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	@# docker-registry is for tests, which start their own on loopback: the system service the
	@# package installs is stopped and kept from starting at boot.
	@if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then \
		$(SUDO) systemctl disable docker-registry 2>/dev/null; fi
	@if [ -d /run/systemd/system ] && systemctl is-active docker-registry >/dev/null 2>&1; then \
		$(SUDO) systemctl stop docker-registry; fi
	@# apt-cache must know the current kernel package for the guest recipe.
	@apt-cache show linux-image-amd64 >/dev/null 2>&1 || $(SUDO) apt-get update -qq
	@# The user QEMU runs as when cloudlet runs as root: no home, no shell; in the kvm group,
	@# which may open /dev/kvm. cloudlet creates it too, at the first VM, if it is missing.
	@id -u cloudlet-qemu >/dev/null 2>&1 || $(SUDO) useradd --system --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin $$(getent group kvm >/dev/null && echo --groups kvm) cloudlet-qemu

build:
	$(GO) build -o $(BIN) ./cmd/cloudlet

guest:
	testdata/guest/build.sh $(BUILD)/guest

demo: deps build guest
	testdata/demo.sh $(BIN) $(BUILD)/guest $(BUILD)/demo-home

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# Packages whose tests boot no guest run under the race detector. Guests run under TCG here, and
# -race would slow the QEMU tests' own processes (FUSE servers, launchers) for no finding.
GUEST_PKGS := ./cmd/... ./vm/... ./bench
RACE_PKGS   = $(shell $(GO) list ./... | grep -v -e '/cmd/' -e '/vm$$' -e '/cloudletfs$$' -e '/bench$$')

test: deps guest vet
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)
	@# cloudletfs: its core and FUSE tests under -race, the one that boots QEMU without.
	$(GO) test -count=1 -race -timeout 20m ./cloudletfs -skip '^TestQEMU'
	$(GO) test -count=1 -timeout 20m ./cloudletfs -run '^TestQEMU'
	@# One package at a time: the QEMU packages each start a private libvirtd and mount FUSE
	@# filesystems in shared directories, and under TCG two at once also slow each other's guests.
	$(GO) test -count=1 -p 1 -timeout 20m $(GUEST_PKGS)
	@# The overlay parsers face files from anywhere: fuzz them for a bounded effort on every run.
	@# Counts, not durations: Go 1.26's fuzz coordinator can fail a clean run when a duration
	@# ends mid-input (golang/go#75804, fixed in Go 1.27).
	$(GO) test ./overlay -run '^$$' -fuzz FuzzDecodeIndex -fuzztime 600000x
	$(GO) test ./overlay -run '^$$' -fuzz FuzzOpen -fuzztime 500000x
	$(GO) test ./overlay -run '^$$' -fuzz FuzzDecompress -fuzztime 200000x
	$(GO) test ./base -run '^$$' -fuzz FuzzParseManifest -fuzztime 200000x
	@# Each input makes a store on disk: a few thousand are what a run can afford.
	$(GO) test ./base -run '^$$' -fuzz FuzzImport -fuzztime 3000x

# Without the QEMU end-to-end tests, for quick iterations.
test-short:
	$(GO) test -short ./...

clean:
	rm -rf $(BUILD)

# Benchmarks: time to first response by mode and link speed on the test guest and on the
# realistic guest (built on demand, cached), then cloudletfs against its backing files,
# overlays against qcow2+xz, and the dirty-limit stall; writes bench/RESULTS.md.
bench: deps build guest
	bench/run.sh 3
