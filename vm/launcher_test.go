package vm_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/vm"
)

// madviseChildEnv makes the test binary act as a stand-in for QEMU: it maps a file-backed
// region, advises MADV_HUGEPAGE on it and prints the mapping's VmFlags.
const madviseChildEnv = "CLOUDLET_TEST_MADVISE_CHILD"

func madviseChild() {
	length := 8 << 20
	f, err := os.CreateTemp("", "madvise-")
	if err != nil {
		panic(err)
	}
	defer os.Remove(f.Name())
	f.Truncate(int64(length))
	mem, err := unix.Mmap(int(f.Fd()), 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
		fmt.Println("madvise error:", err)
		os.Exit(1)
	}
	smaps, _ := os.Open("/proc/self/smaps")
	in := false
	s := bufio.NewScanner(smaps)
	for s.Scan() {
		if strings.Contains(s.Text(), f.Name()) {
			in = true
		}
		if in && strings.HasPrefix(s.Text(), "VmFlags:") {
			fmt.Println(s.Text())
			return
		}
	}
	fmt.Println("mapping not found")
	os.Exit(1)
}

// TestHugepageFilter runs the launcher for real: the filter drops MADV_HUGEPAGE on exactly the
// RAM length and leaves every other length alone.
func TestHugepageFilter(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		ramBytes string // the launcher's filter length; "" runs without the launcher
		wantHG   bool
	}{
		{"no launcher", "", true},
		{"launcher, same length", fmt.Sprint(8 << 20), false},
		{"launcher, other length", fmt.Sprint(16 << 20), true},
		{"launcher, length differs in the high word", fmt.Sprint(8<<20 | 1<<32), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), madviseChildEnv+"=1")
			if tc.ramBytes != "" {
				cmd = exec.Command(self, self)
				cmd.Env = append(cmd.Env, madviseChildEnv+"=1", "CLOUDLET_QEMU_LAUNCHER_RAM_BYTES="+tc.ramBytes)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if !strings.HasPrefix(string(out), "VmFlags:") {
				t.Fatalf("child said %q", out)
			}
			if got := strings.Contains(string(out), " hg"); got != tc.wantHG {
				t.Fatalf("hugepage advice applied = %v, want %v (%s)", got, tc.wantHG, strings.TrimSpace(string(out)))
			}
		})
	}
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }

func TestParseForward(t *testing.T) {
	tests := []struct {
		in      string
		want    vm.Forward
		wantErr string
	}{
		{"tcp:8080-:80", vm.Forward{Proto: "tcp", HostPort: 8080, GuestPort: 80}, ""},
		{"tcp::8080-:80", vm.Forward{Proto: "tcp", HostPort: 8080, GuestPort: 80}, ""},
		{"tcp:127.0.0.1:8080-:80", vm.Forward{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}, ""},
		{"udp:5353-:53", vm.Forward{Proto: "udp", HostPort: 5353, GuestPort: 53}, ""},
		{"tcp:8080-80", vm.Forward{Proto: "tcp", HostPort: 8080, GuestPort: 80}, ""},
		{"sctp:1-:2", vm.Forward{}, "protocol"},
		{"tcp:8080", vm.Forward{}, "no '-'"},
		{"tcp:99999-:80", vm.Forward{}, "host port"},
		{"tcp:8080-:0", vm.Forward{}, "guest port"},
		{"tcp:foo:8080-:80", vm.Forward{}, "not an IP"},
		{"tcp:8080-10.0.2.16:80", vm.Forward{}, "guest address"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := vm.ParseForward(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"256M", 256 << 20, true}, {"1G", 1 << 30, true}, {"512MiB", 512 << 20, true},
		{"4096", 4096, true}, {"64k", 64 << 10, true},
		{"", 0, false}, {"-1M", 0, false}, {"lots", 0, false}, {"99999999G", 0, false},
	}
	for _, tc := range tests {
		got, err := vm.ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
