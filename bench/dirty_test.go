package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/cloudletfs"
)

// dirtyChildEnv makes the test binary a stand-in for a guest: it dirties a shared mapping of
// the file page by page and reports the total time and the longest single page write (a stall
// in the kernel's dirty throttling shows up there).
const dirtyChildEnv = "CLOUDLET_BENCH_DIRTY_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(dirtyChildEnv); path != "" {
		if err := dirtyChild(path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func dirtyChild(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, _ := f.Stat()
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	start := time.Now()
	var worst time.Duration
	for off := 0; off < len(mem); off += 4096 {
		t0 := time.Now()
		mem[off] = byte(off>>12) | 1
		worst = max(worst, time.Since(t0))
	}
	fmt.Println(time.Since(start).Nanoseconds(), worst.Nanoseconds())
	return unix.Munmap(mem)
}

// BenchmarkSharedMmapDirty: a process dirties 256 MiB through a shared mapping of memory/image
// (what QEMU does with share=on during capture), with the kernel's default per-mount dirty
// limit and with RaiseDirtyLimit.
func BenchmarkSharedMmapDirty(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for _, raise := range []bool{false, true} {
		b.Run("raise="+strconv.FormatBool(raise), func(b *testing.B) {
			var worst time.Duration
			for range b.N {
				b.StopTimer()
				fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: b.TempDir(),
					Images: []cloudletfs.ImageConfig{{Name: "memory", Size: 256 << 20}}})
				if err != nil {
					b.Fatal(err)
				}
				mnt, err := fsys.Mount(b.TempDir(), cloudletfs.MountOptions{RaiseDirtyLimit: raise})
				if err != nil {
					b.Fatal(err)
				}
				cmd := exec.Command(self, "-test.run=^$")
				cmd.Env = append(os.Environ(), dirtyChildEnv+"="+filepath.Join(mnt.Dir, "memory/image"))
				b.StartTimer()
				out, err := cmd.Output()
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				f := strings.Fields(string(out))
				w, _ := strconv.ParseInt(f[1], 10, 64)
				worst = max(worst, time.Duration(w))
				mnt.Unmount()
				fsys.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(worst.Milliseconds()), "worst-stall-ms")
		})
	}
}
