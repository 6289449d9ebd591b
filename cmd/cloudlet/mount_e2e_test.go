package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// startMount runs 'cloudlet mount' in the background and waits for its ready line.
func startMount(t *testing.T, ctx context.Context, home string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, cloudletBin, append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("mount: %q, %v\n%s", line, err, stderr.String())
	}
	return cmd
}

func stopWith(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil && sig != syscall.SIGKILL {
			t.Fatalf("mount after %v: %v", sig, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mount still runs 30 s after %v", sig)
	}
}

// testMount serves a real base through 'cloudlet mount' and uses it as another process would.
func testMount(t *testing.T, ctx context.Context, home, id string) {
	mp, cache := t.TempDir(), t.TempDir()
	cmd := startMount(t, ctx, home, id, mp, "--cache", cache, "--capture")
	baseDisk, err := os.ReadFile(filepath.Join(home, "bases", id, base.DiskFile))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(mp, "disk/image"))
	if err != nil || !bytes.Equal(got, baseDisk) {
		t.Fatalf("disk/image differs from the base disk (%v)", err)
	}
	mem, err := os.OpenFile(filepath.Join(mp, "memory/image"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("cloudlet"), 512)
	if _, err := mem.WriteAt(page, 2*4096); err != nil {
		t.Fatal(err)
	}
	mem.Close()
	stats, err := os.ReadFile(filepath.Join(mp, "stats/disk"))
	if err != nil || !strings.Contains(string(stats), "bytes_read ") {
		t.Fatalf("stats/disk: %q, %v", stats, err)
	}
	stopWith(t, cmd, syscall.SIGTERM)
	if mounted(mp) {
		t.Fatal("still mounted after SIGTERM")
	}
	trace, err := cloudletfs.ReadTrace(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(trace.Modified) != 1 || trace.Modified[0].Image != "memory" || trace.Modified[0].Chunk != 2 {
		b, _ := json.Marshal(trace.Modified)
		t.Fatalf("trace of modified chunks: %s", b)
	}

	// The cache keeps the write across mounts; after kill -9, the next mount clears the dead one.
	cmd = startMount(t, ctx, home, id, mp, "--cache", cache)
	got = make([]byte, len(page))
	f, _ := os.Open(filepath.Join(mp, "memory/image"))
	f.ReadAt(got, 2*4096)
	f.Close()
	if !bytes.Equal(got, page) {
		t.Fatal("the write did not survive a remount of the same cache")
	}
	stopWith(t, cmd, syscall.SIGKILL)
	cmd = startMount(t, ctx, home, id, mp, "--cache", cache)
	stopWith(t, cmd, syscall.SIGINT)
	if mounted(mp) {
		t.Fatal("still mounted after SIGINT")
	}
	if r := run(t, ctx, home, "mount", id, mp, "--capture"); r.code == 0 || !strings.Contains(r.stderr, "--capture needs --cache") {
		t.Fatalf("--capture without --cache: %+v", r)
	}
	testMountUser(t, ctx, home, id, baseDisk[:4096])
}

// testMountUser: with --user, that user (here nobody, as a QEMU would run) opens the images
// by their path; without it, nobody but us gets in; a mount point out of its reach is refused.
func testMountUser(t *testing.T, ctx context.Context, home, id string, firstPage []byte) {
	if os.Geteuid() != 0 {
		t.Fatal("--user needs root, to run a reader as another user")
	}
	reach, err := os.MkdirTemp("", "cloudlet-mount-user-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(reach)
	os.Chmod(reach, 0o711)
	mp := filepath.Join(reach, "mnt")
	os.Mkdir(mp, 0o700)
	readAsNobody := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "dd", "if="+filepath.Join(mp, "disk/image"), "bs=4096", "count=1", "status=none")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return cmd.Output()
	}
	for _, tc := range []struct {
		args  []string
		allow bool
	}{
		{nil, false},
		{[]string{"--user", "nobody"}, true},
	} {
		cmd := startMount(t, ctx, home, append([]string{id, mp}, tc.args...)...)
		got, err := readAsNobody()
		stopWith(t, cmd, syscall.SIGTERM)
		if tc.allow && (err != nil || !bytes.Equal(got, firstPage)) {
			t.Errorf("mount %v: nobody read %d bytes of disk/image (%v), want the base's first page", tc.args, len(got), err)
		}
		if !tc.allow && err == nil {
			t.Errorf("mount %v: nobody read disk/image, want Permission denied", tc.args)
		}
	}
	if r := run(t, ctx, home, "mount", id, t.TempDir(), "--user", "nobody"); r.code == 0 || !strings.Contains(r.stderr, "out of reach of uid 65534") {
		t.Fatalf("--user with a mount point out of the user's reach: %+v", r)
	}
}

func mounted(dir string) bool {
	m, _ := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	return len(m) > 0
}
