package cloudletfs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

const guestRAM = 128 << 20

// TestQEMUOnCloudletfs boots the test guest with its disk on disk/image and its RAM as a
// shared memory-backend-file on memory/image, snapshots it, and then resumes it from a second
// mount where every changed chunk is pending: early start, with chunks fetched on demand. The
// resumed QEMU runs as another user, the only one besides us the second mount lets in.
func TestQEMUOnCloudletfs(t *testing.T) {
	requireRoot(t)
	g := testguest.Get(t)
	testguest.RequireFUSE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	work := t.TempDir()

	// 1. Boot on cloudletfs: the disk's base is the guest's root disk, RAM starts as zeros.
	bootCfg := cloudletfs.Config{Dir: filepath.Join(work, "boot-cache"), Identity: "boot", Images: []cloudletfs.ImageConfig{
		{Name: "disk", Size: fileSize(t, g.RootFS), Base: g.RootFS},
		{Name: "memory", Size: guestRAM},
	}}
	bootFS, err := cloudletfs.Open(bootCfg)
	if err != nil {
		t.Fatal(err)
	}
	mp := t.TempDir()
	mnt, err := bootFS.Mount(mp, cloudletfs.MountOptions{RaiseDirtyLimit: true})
	if err != nil {
		bootFS.Close()
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			mnt.Unmount()
			bootFS.Close()
		}
	})
	port := testguest.FreePort(t)
	opts := vm.DefaultConfig()
	opts.MemoryBytes = guestRAM
	vmOpts := vm.Options{
		Config: opts, Kernel: g.Kernel, Initrd: g.Initrd,
		Disk:   vm.Disk{Path: filepath.Join(mp, "disk/image")},
		Memory: vm.Memory{Path: filepath.Join(mp, "memory/image"), Share: true},
		// This test process serves the mount, and must not open it itself.
		ServedByCaller: true,
		Forwards:       []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: port, GuestPort: 80}},
	}
	v, err := vm.Boot(ctx, vmOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	url := fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port)
	waitHTTP(t, ctx, url)
	if !strings.Contains(getBody(t, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/mem?16", port)), "dirtied 16 MiB") {
		t.Fatal("memory-dirtying page failed")
	}
	devstate := filepath.Join(work, "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		t.Fatal(err)
	}
	mem, disk := bootFS.Image("memory").Stats(), bootFS.Image("disk").Stats()
	t.Logf("boot: memory %+v", mem)
	t.Logf("boot: disk %+v", disk)
	if mem.BytesWritten < 16<<20 || disk.BytesRead == 0 {
		t.Fatalf("the guest's RAM writes did not reach memory/image (%d bytes) or its disk was not read", mem.BytesWritten)
	}
	images := map[string][]byte{"memory": readImage(t, bootFS.Image("memory")), "disk": readImage(t, bootFS.Image("disk"))}
	if err := mnt.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := bootFS.Close(); err != nil {
		t.Fatal(err)
	}
	unmounted = true

	// 2. Early start: a new mount where every chunk that differs from the base (the root
	// disk, zero RAM) is pending, supplied on demand by an in-memory source.
	rootfs, err := os.ReadFile(g.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	diskPlan, diskPending := planAgainst(images["disk"], rootfs)
	memPlan, memPending := planAgainst(images["memory"], nil)
	src := &cloudletfs.MemSource{Data: images}
	resFS, err := cloudletfs.Open(cloudletfs.Config{Dir: filepath.Join(work, "resume-cache"), Identity: "resume", Demander: src,
		DiscardModified: true, Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: int64(len(rootfs)), Base: g.RootFS, Plan: diskPlan},
			{Name: "memory", Size: guestRAM, Plan: memPlan},
		}})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(resFS)
	// QEMU resumes as another user, as a synthesis does under root: only that user may open
	// the images, and it reaches them in a run directory.
	qemuUser, err := vm.LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	user := &cloudletfs.User{UID: uint32(qemuUser.UID), GID: uint32(qemuUser.GID)}
	mp2, removeMP2, err := cloudletfs.PrepareMountPoint("", filepath.Join(reachableDir(t), "run"), user)
	if err != nil {
		resFS.Close()
		t.Fatal(err)
	}
	mnt2, err := resFS.Mount(mp2, cloudletfs.MountOptions{User: user})
	if err != nil {
		resFS.Close()
		t.Fatal(err)
	}
	defer func() {
		mnt2.Unmount()
		resFS.Close()
		removeMP2()
	}()
	rOpts := vmOpts
	rOpts.RunAs = qemuUser
	rOpts.Disk.Path = filepath.Join(mp2, "disk/image")
	rOpts.Memory = vm.Memory{Path: filepath.Join(mp2, "memory/image"), Share: false}
	start := time.Now()
	r, err := vm.Resume(ctx, rOpts, devstate)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Kill()
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.PID())); err != nil || !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t", qemuUser.UID)) {
		t.Fatalf("the resumed QEMU does not run as uid %d: %v\n%s", qemuUser.UID, err, status)
	}
	body := waitHTTP(t, ctx, url)
	ttfr := time.Since(start)
	if !strings.Contains(body, "hello from cloudlet-guest") {
		t.Fatalf("resumed guest answered %q", body)
	}
	// The dirtied memory survived the snapshot: the guest still has its 16 MiB file.
	out, _, err := r.Console().Run(ctx, "ls -l /dev/shm/dirty")
	if err != nil || !strings.Contains(out, "16777216") {
		t.Fatalf("resumed guest lost its tmpfs file: %q, %v", out, err)
	}
	ms, ds := resFS.Image("memory").Stats(), resFS.Image("disk").Stats()
	t.Logf("early start: first answer after %v; memory fetched %d of %d pending chunks, disk %d of %d",
		ttfr, ms.ChunksFetched, memPending, ds.ChunksFetched, diskPending)
	if ms.ChunksFetched == 0 || ms.DemandMisses == 0 {
		t.Fatal("the resume fetched no memory chunk on demand")
	}
	if ms.ChunksFetched >= int64(memPending) {
		t.Fatalf("the resume fetched all %d pending memory chunks: not lazy", memPending)
	}
	if ms.BytesWritten != 0 {
		t.Fatalf("a private (share=off) RAM mapping wrote %d bytes to memory/image", ms.BytesWritten)
	}
	if err := src.Err(); err != nil {
		t.Fatal(err)
	}
}

// planAgainst marks each chunk of img zero, base (equal to base's chunk) or pending.
func planAgainst(img, base []byte) ([]cloudletfs.State, int) {
	n := chunk.Count(int64(len(img)))
	plan := make([]cloudletfs.State, n)
	zero := make([]byte, chunk.Size)
	pending := 0
	for i := range n {
		lo, hi := i*chunk.Size, min((i+1)*chunk.Size, int64(len(img)))
		switch {
		case base != nil && bytes.Equal(img[lo:hi], base[lo:hi]):
			plan[i] = cloudletfs.StateBase
		case bytes.Equal(img[lo:hi], zero[:hi-lo]):
			plan[i] = cloudletfs.StateZero
		default:
			plan[i] = cloudletfs.StatePending
			pending++
		}
	}
	return plan, pending
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// readImage reads a whole image through the store (not the mount, which this process serves).
func readImage(t *testing.T, img *cloudletfs.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitHTTP polls url until it answers 200 and returns the body.
func waitHTTP(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(b)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s: no answer: %v", url, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
