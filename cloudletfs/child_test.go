package cloudletfs_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/vm"
)

// Tests that touch the mount through mmap, or that kill the server, need a second process:
// the serving process must never fault on its own mount. The test binary re-executes itself
// in one of these roles.
const childEnv = "CLOUDLETFS_TEST_CHILD"

func TestMain(m *testing.M) {
	vm.LauncherMain()
	if role := os.Getenv(childEnv); role != "" {
		if err := runChild(role, os.Args[len(os.Args)-1]); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child runs the test binary in a role with one argument.
func child(t *testing.T, role, arg string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	return cmd
}

func runChild(role, arg string) error {
	args := strings.Split(arg, ",")
	switch role {
	case "mmap-shared", "mmap-private":
		return mmapChild(role == "mmap-shared", args[0], args[1:])
	case "daemon":
		return daemonChild(args[0], args[1], args[2])
	case "request":
		return requestChild(args[0], args[1])
	}
	return fmt.Errorf("unknown role %q", role)
}

// mmapChild maps the file, prints the SHA-256 of each listed page, then fills each with a
// pattern (page p gets byte p*7+1) and, for a shared mapping, msyncs.
func mmapChild(shared bool, path string, pages []string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, _ := f.Stat()
	flags := unix.MAP_PRIVATE
	if shared {
		flags = unix.MAP_SHARED
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	for _, ps := range pages {
		p, _ := strconv.Atoi(ps)
		page := mem[p*chunk.Size : (p+1)*chunk.Size]
		sum := sha256.Sum256(page)
		fmt.Println(hex.EncodeToString(sum[:]))
		for i := range page {
			page[i] = byte(p*7 + 1)
		}
	}
	if shared {
		if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
			return fmt.Errorf("msync: %w", err)
		}
	}
	return unix.Munmap(mem)
}

// daemonChild serves the fixture (seed 11) from cacheDir at mountpoint after delivering
// memory chunks 2, 3, 6, 7 durably and 10, 11 without a sync, then waits to be killed.
func daemonChild(baseDir, cacheDir, mountpoint string) error {
	f, err := buildFixture(baseDir, 11)
	if err != nil {
		return err
	}
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cacheDir, Images: f.configs, Demander: src, Identity: "fixture", FlushInterval: time.Hour})
	if err != nil {
		return err
	}
	src.Attach(fsys)
	for _, c := range []int64{2, 3, 6, 7} {
		if err := fsys.Deliver("memory", c, src.Chunk("memory", c)); err != nil {
			return err
		}
	}
	if err := fsys.Sync(); err != nil {
		return err
	}
	for _, c := range []int64{10, 11} {
		if err := fsys.Deliver("memory", c, src.Chunk("memory", c)); err != nil {
			return err
		}
	}
	if _, err := fsys.Mount(mountpoint, cloudletfs.MountOptions{}); err != nil {
		return err
	}
	fmt.Println("ready")
	select {}
}

// TestSharedMmapWrites: writes through a shared mapping (QEMU share=on) reach the cache and
// show up in chunks_modified; the base is untouched.
func TestSharedMmapWrites(t *testing.T) {
	f := newFixture(t, t.TempDir(), 12)
	m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{RaiseDirtyLimit: true})
	pages := []int64{0, 1, 2, 50, 127} // base, zero, pending, pending, last
	var list []string
	for _, p := range pages {
		list = append(list, strconv.FormatInt(p, 10))
	}
	out, err := child(t, "mmap-shared", m.path("memory", "image")+","+strings.Join(list, ",")).CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// What the child saw before writing is the model.
	sums := strings.Fields(string(out))
	for i, p := range pages {
		want := sha256.Sum256(f.want["memory"][p*chunk.Size : (p+1)*chunk.Size])
		if sums[i] != hex.EncodeToString(want[:]) {
			t.Errorf("page %d read through the mapping differs from the model", p)
		}
	}
	img := m.fs.Image("memory")
	buf := make([]byte, chunk.Size)
	for _, p := range pages {
		if s := img.State(p); s != cloudletfs.StateModified {
			t.Errorf("page %d: state %v, want modified", p, s)
		}
		if _, err := img.ReadAt(t.Context(), buf, p*chunk.Size); err != nil {
			t.Fatal(err)
		}
		if buf[0] != byte(p*7+1) || buf[chunk.Size-1] != byte(p*7+1) {
			t.Errorf("page %d: cache holds %#x, want %#x", p, buf[0], byte(p*7+1))
		}
	}
	modified := m.fs.Trace().Modified
	if len(modified) != len(pages) {
		t.Fatalf("chunks_modified has %d events, want %d: %v", len(modified), len(pages), modified)
	}
	lines, err := readAvailable(m.path("streams", "chunks_modified"), len(pages))
	if err != nil || len(lines) != len(pages) {
		t.Fatalf("streams/chunks_modified: %q, %v", lines, err)
	}
	base, _ := os.ReadFile(f.configs[1].Base)
	if base[0] == 1 && base[1] == 1 {
		t.Fatal("the base changed")
	}
}

// TestPrivateMmap: a private mapping (QEMU share=off, the synthesis mode) reads the model,
// pending chunks included, and its writes never reach the mount.
func TestPrivateMmap(t *testing.T) {
	f := newFixture(t, t.TempDir(), 13)
	m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{})
	out, err := child(t, "mmap-private", m.path("memory", "image")+",2,3,4,5").CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	sums := strings.Fields(string(out))
	for i, p := range []int64{2, 3, 4, 5} {
		want := sha256.Sum256(f.want["memory"][p*chunk.Size : (p+1)*chunk.Size])
		if sums[i] != hex.EncodeToString(want[:]) {
			t.Errorf("page %d differs from the model", p)
		}
	}
	if mod := m.fs.Trace().Modified; len(mod) != 0 {
		t.Fatalf("private writes reached the mount: %v", mod)
	}
}

// TestCrashRecovery kills the serving process with SIGKILL, then mounts the same cache
// again: durable chunks are served without a fetch, chunks delivered but not yet durable are
// fetched again, no pending chunk is served as zeros, and the dead mount is cleared.
func TestCrashRecovery(t *testing.T) {
	baseDir, cache, mp := t.TempDir(), t.TempDir(), t.TempDir()
	cmd := child(t, "daemon", baseDir+","+cache+","+mp)
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("daemon: %q, %v", line, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of the mount whose server died: %v, want ENOTCONN", err)
	}

	f := newFixture(t, baseDir, 11)
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Demander: src, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fsys)
	mnt, err := fsys.Mount(mp, cloudletfs.MountOptions{})
	if err != nil {
		fsys.Close()
		t.Fatalf("mount over the stale mount: %v", err)
	}
	defer func() {
		mnt.Unmount()
		fsys.Close()
	}()
	got, err := os.ReadFile(mp + "/memory/image")
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "memory after the crash", got, f.want["memory"], 0)
	for c := int64(0); c < 128; c++ {
		want := 0
		switch {
		case c%4 < 2, c == 2, c == 3, c == 6, c == 7:
			// base, zero, or durable before the crash
		default:
			want = 1 // pending, including 10 and 11, which were not durable
		}
		if n := src.Demands("memory", c); n != want {
			t.Errorf("chunk %d fetched %d times after the crash, want %d", c, n, want)
		}
	}
}

// TestKillAfterOverwrite: the VM overwrites chunks already durable as present (one whole,
// one in part), through the mount, and the server is killed before its next flush. A re-run
// over the cache must read the overlay's bytes there, not the VM's.
func TestKillAfterOverwrite(t *testing.T) {
	baseDir, cache, mp := t.TempDir(), t.TempDir(), t.TempDir()
	cmd := child(t, "daemon", baseDir+","+cache+","+mp)
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("daemon: %q, %v", line, err)
	}
	img, err := os.OpenFile(mp+"/memory/image", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Chunks 2 and 6 are durable as present in the daemon (its flush interval is an hour).
	writes := []struct {
		off int64
		n   int
	}{{2 * chunk.Size, chunk.Size}, {6*chunk.Size + 100, 200}}
	for _, w := range writes {
		if _, err := img.WriteAt(bytes.Repeat([]byte{0xaa}, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	img.Close()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	killed = true
	if _, err := cloudletfs.ClearStale(mp); err != nil {
		t.Fatal(err)
	}

	f := newFixture(t, baseDir, 11)
	for _, discard := range []bool{false, true} { // a discarding open forgets the VM writes
		got := reopenAndRead(t, f, cache, discard, "memory")
		for _, c := range []int64{2, 6} {
			lo, hi := c*chunk.Size, (c+1)*chunk.Size
			if discard {
				checkBytes(t, fmt.Sprintf("chunk %d after the kill, in a re-run", c), got[lo:hi], f.want["memory"][lo:hi], lo)
			} else if bytes.Equal(got[lo:hi], f.want["memory"][lo:hi]) {
				// Kept (a mount that keeps VM writes), the chunk is the VM's: its write
				// reached the cache file before the kill.
				t.Errorf("chunk %d after the kill, kept: the overlay's bytes, want the VM's write", c)
			}
		}
	}
}
