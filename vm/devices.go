package vm

import (
	"encoding/json"
	"strings"
)

// guestArgs are the QEMU arguments for guest RAM and the PCI devices, shared by both drivers
// so that a snapshot taken under one resumes under the other. The VGA is the machine's own
// (slot 1, made before any -device); the others have fixed slots: libvirt places devices of
// its own, and a device left to QEMU's first free slot could land elsewhere than in the
// snapshot (and under libvirt, on a taken slot).
func guestArgs(opts Options) []string {
	format := opts.Disk.Format
	if format == "" {
		format = "raw"
	}
	bus := rootBus(opts.Config.Machine)
	return []string{
		"-object", jsonArg(map[string]any{
			"qom-type": "memory-backend-file", "id": "mem", "size": opts.Config.MemoryBytes,
			"mem-path": opts.Memory.Path, "share": opts.Memory.Share,
		}),
		// Guest RAM is this object, not the machine's default backend.
		"-machine", "memory-backend=mem",
		"-drive", "file=" + qemuEscape(opts.Disk.Path) + ",format=" + format + ",if=none,id=disk0,cache=writeback",
		// -vga std, not -device VGA: the same device in the same first free slot (1), but the
		// explicit device costs synthesis a memory demand miss outside the profiled working
		// set at every resume (measured: TTFR 0.95 s instead of 0.48 s at 38 Mbit/s).
		"-vga", "std",
		"-device", jsonArg(map[string]any{"driver": "virtio-blk-pci", "drive": "disk0", "bus": bus, "addr": "0x2"}),
		"-netdev", netdevArg(opts),
		// romfile= skips the iPXE option ROM: it is never used and would be one more RAM block.
		"-device", jsonArg(map[string]any{"driver": "virtio-net-pci", "netdev": "net0", "romfile": "", "bus": bus, "addr": "0x3"}),
	}
}

// netdevArg is QEMU's user networking. The guest is hostile: without restrict=on, it would
// reach the host's loopback services through 10.0.2.2 and every address the host reaches.
// Forwards into the guest (hostfwd) work either way. With NetworkInternet, QEMU runs in a
// network namespace of its own (see egress.go): there its forwards listen on every address,
// for slirp4netns to hand on the host's connections.
func netdevArg(opts Options) string {
	netdev := "user,id=net0,restrict=on"
	if opts.Network == NetworkInternet {
		netdev = "user,id=net0"
	}
	for _, f := range opts.Forwards {
		if opts.Network == NetworkInternet {
			f.HostAddr = ""
		}
		netdev += ",hostfwd=" + f.String()
	}
	return netdev
}

// jsonArg is a QEMU option value in JSON form, which needs no escaping of commas in paths.
func jsonArg(v map[string]any) string {
	b, _ := json.Marshal(v) // maps of strings, numbers and bools always marshal
	return string(b)
}

// rootBus is the machine's PCI root bus: pcie.0 on q35, pci.0 on the older pc (i440fx).
func rootBus(machine string) string {
	if strings.HasPrefix(machine, "q35") || strings.HasPrefix(machine, "pc-q35") {
		return "pcie.0"
	}
	return "pci.0"
}
