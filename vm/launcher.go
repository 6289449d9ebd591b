package vm

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// launcherEnv marks a re-exec of our own binary as the QEMU launcher. Its value is the length in
// bytes of the guest RAM block whose MADV_HUGEPAGE advice is to be dropped, or 0 to keep it.
const launcherEnv = "CLOUDLET_QEMU_LAUNCHER_RAM_BYTES"

// runAsEnv, also set for the launcher, names the user QEMU runs as: "UID:GID:GROUP,GROUP...".
const runAsEnv = "CLOUDLET_QEMU_LAUNCHER_RUN_AS"

// LauncherMain turns this process into the QEMU launcher when it was started as one, and
// returns at once otherwise. Every binary that starts VMs (the cloudlet command, and test
// binaries through TestMain) calls it first thing.
//
// Why: QEMU advises MADV_HUGEPAGE on all guest RAM. On a file mapping (RAM served by
// cloudletfs) Linux then turns every fault into a multi-MiB readahead, which reads far more of
// the memory image than the guest touches. A seccomp filter, installed here and inherited by
// QEMU across exec, makes exactly that madvise call a successful no-op. Advice on other lengths
// (the TCG code buffer, anonymous RAM under KVM) is kept.
//
// The launcher also drops to the unprivileged user QEMU runs as. QEMU's own -runas cannot be
// used: it switches user after its -sandbox filter is in place, which forbids exactly that.
func LauncherMain() {
	ram, hasRAM := os.LookupEnv(launcherEnv)
	runAs, hasRunAs := os.LookupEnv(runAsEnv)
	if !hasRAM && !hasRunAs {
		return
	}
	os.Unsetenv(launcherEnv)
	os.Unsetenv(runAsEnv)
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "cloudlet qemu launcher: "+format+"\n", args...)
		os.Exit(127)
	}
	var length uint64
	if hasRAM {
		var err error
		if length, err = strconv.ParseUint(ram, 10, 64); err != nil {
			fail("bad invocation (%s=%q)", launcherEnv, ram)
		}
	}
	if len(os.Args) < 2 {
		fail("bad invocation: no program to run")
	}
	// The filter, the user switch and the exec must happen on one thread; TSYNC and Go's
	// all-threads set*id calls cover the others anyway.
	runtime.LockOSThread()
	if hasRunAs {
		u, err := parseRunAs(runAs)
		if err != nil {
			fail("%v", err)
		}
		if err := dropTo(u); err != nil {
			fail("%v", err)
		}
	}
	if length > 0 {
		if err := installHugepageFilter(length); err != nil {
			fail("%v", err)
		}
	}
	err := unix.Exec(os.Args[1], os.Args[1:], os.Environ())
	fail("exec %s: %v", os.Args[1], err)
}

// Offsets into struct seccomp_data: nr, arch, instruction_pointer, args[6].
const (
	seccompNr     = 0
	seccompArch   = 4
	seccompArgLo1 = 16 + 8*1 // madvise's len, low word (little endian)
	seccompArgHi1 = 16 + 8*1 + 4
	seccompArgLo2 = 16 + 8*2 // madvise's advice
)

// hugepageFilter builds the BPF program: on x86-64, madvise(addr, length, MADV_HUGEPAGE)
// returns 0 without effect; everything else is allowed.
func hugepageFilter(length uint64) []unix.SockFilter {
	const (
		ld  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
	)
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	// Each test falls through on a match and jumps to the final ALLOW on a miss; jf counts
	// the instructions between the next one and ALLOW.
	prog := []unix.SockFilter{
		stmt(ld, seccompArch),
		{Code: jeq, K: unix.AUDIT_ARCH_X86_64, Jf: 9},
		stmt(ld, seccompNr),
		{Code: jeq, K: unix.SYS_MADVISE, Jf: 7},
		stmt(ld, seccompArgLo2),
		{Code: jeq, K: unix.MADV_HUGEPAGE, Jf: 5},
		stmt(ld, seccompArgLo1),
		{Code: jeq, K: uint32(length), Jf: 3},
		stmt(ld, seccompArgHi1),
		{Code: jeq, K: uint32(length >> 32), Jf: 1},
		stmt(ret, unix.SECCOMP_RET_ERRNO|0),
		stmt(ret, unix.SECCOMP_RET_ALLOW),
	}
	return prog
}

func installHugepageFilter(length uint64) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("hugepage filter: only built for amd64, not %s", runtime.GOARCH)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("hugepage filter: prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	prog := hugepageFilter(length)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("hugepage filter: seccomp(SET_MODE_FILTER, TSYNC): %w", errno)
	}
	return nil
}
