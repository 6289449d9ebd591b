// Package testguest gives tests the test guest (kernel, initrd, root disk) built by
// testdata/guest/build.sh, and the rule for tools a test needs: under CI a missing tool fails
// the test loudly; on a developer's machine it skips with the command that fixes it.
package testguest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Guest is a built test guest.
type Guest struct {
	Kernel, Initrd, RootFS string
}

// Require fails (under CI) or skips the test when a command is missing.
func Require(t testing.TB, commands ...string) {
	t.Helper()
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			missing(t, c+" not found; run 'make deps'")
		}
	}
}

// RequireFUSE fails (under CI) or skips the test when /dev/fuse cannot be opened.
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		missing(t, "/dev/fuse unusable: "+err.Error())
		return
	}
	f.Close()
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI must run this test)", why)
	}
	t.Skip(why)
}

var buildOnce sync.Once
var buildErr error
var buildOut []byte

// Get builds the guest if needed (the recipe caches it in build/guest) and returns its files.
func Get(t testing.TB) Guest {
	t.Helper()
	Require(t, "qemu-system-x86_64", "qemu-img", "cpio", "mke2fs", "dpkg-deb", "apt-get", "modprobe")
	root := RepoRoot(t)
	buildOnce.Do(func() {
		cmd := exec.Command(filepath.Join(root, "testdata/guest/build.sh"), filepath.Join(root, "build/guest"))
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building the test guest: %v\n%s", buildErr, buildOut)
	}
	dir := filepath.Join(root, "build/guest")
	return Guest{
		Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img"),
		RootFS: filepath.Join(dir, "rootfs.img"),
	}
}

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// FreePort returns a loopback TCP port that nothing listens on.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
