// Package capture turns a customised base VM into an overlay. It resumes the base with both
// images on a cloudletfs capture mount (RAM as a shared mapping of memory/image, so the guest's
// writes reach the cache and are traced), runs the developer's commands, snapshots the device
// state, and diffs the modified chunks against the base: zero, base and self dedup, with a
// hash check that drops chunks that were written but did not change.
package capture

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

// Options describe one capture.
type Options struct {
	Base *base.Base
	// WorkDir holds the cloudletfs cache and mount point; the caller removes it.
	WorkDir string
	// VM carries the run options (forwards, accelerator, VNC, logs); capture fills in the
	// config, images and kernel from the base.
	VM vm.Options
	// Exec are shell commands run in the guest over the serial console, in order; the first
	// that fails ends the capture.
	Exec []string
	// Ready, if set, must answer before the snapshot.
	Ready        *probe.Probe
	ReadyTimeout time.Duration
	// Wait, if set, is called after the commands and before the snapshot (for a developer
	// customising the guest by hand).
	Wait   func(ctx context.Context, v *vm.VM) error
	Codec  overlay.Codec
	Output string // the overlay file, written atomically
	// SaveImages, if set, receives disk.img and memory.img as the customised VM left them.
	SaveImages string
	Log        io.Writer // progress lines; nil discards
	Progress   base.Progress
}

// Result is a capture's outcome.
type Result struct {
	Overlay overlay.Summary
	Diff    DiffStats
	Elapsed time.Duration // the whole capture
	Build   time.Duration // from the snapshot to the written overlay: diff, dedup, compression
}

// Create runs a capture.
func Create(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	var res Result
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format, args...)
		}
	}
	b := o.Base
	fsys, err := cloudletfs.Open(cloudletfs.Config{
		Dir:      filepath.Join(o.WorkDir, "cache"),
		Identity: "capture " + b.ID,
		Capture:  true,
		Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size, Base: b.Path(base.DiskFile)},
			{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size, Base: b.Path(base.MemoryFile)},
		},
	})
	if err != nil {
		return res, err
	}
	defer fsys.Close()
	// QEMU's user, if another, gets the images, and a mount point it can reach.
	var user *cloudletfs.User
	if u := o.VM.RunAs; u != nil {
		user = &cloudletfs.User{UID: uint32(u.UID), GID: uint32(u.GID)}
	}
	mp, removeMountPoint, err := cloudletfs.PrepareMountPoint(filepath.Join(o.WorkDir, "mnt"), cloudletfs.RunDir, user)
	if err != nil {
		return res, err
	}
	defer removeMountPoint()
	mnt, err := fsys.Mount(mp, cloudletfs.MountOptions{RaiseDirtyLimit: true, User: user})
	if err != nil {
		return res, err
	}
	defer mnt.Unmount()

	opts := o.VM
	bo := b.VMOptions()
	opts.Config, opts.Kernel, opts.Initrd = bo.Config, bo.Kernel, bo.Initrd
	opts.Disk = vm.Disk{Path: filepath.Join(mp, "disk/image")}
	opts.Memory = vm.Memory{Path: filepath.Join(mp, "memory/image"), Share: true}
	opts.ServedByCaller = true // we serve the mount: sync through the store instead
	v, err := vm.Resume(ctx, opts, b.Path(base.DevstateFile))
	if err != nil {
		return res, fmt.Errorf("resume base %s for capture: %w", b.ID, err)
	}
	defer v.Kill()
	logf("resumed base %s (%s)\n", b.ID[:12], v)
	// Commands and the probe wait for the guest: if it dies, they end at once and say so.
	gctx, stopWaiting := v.Until(ctx)
	defer stopWaiting()

	for _, cmd := range o.Exec {
		logf("guest$ %s\n", cmd)
		out, status, err := v.Console().Run(gctx, cmd)
		if out != "" {
			logf("%s", indentOutput(out))
		}
		if err != nil {
			return res, fmt.Errorf("--exec %q: %w", cmd, err)
		}
		if status != 0 {
			return res, fmt.Errorf("--exec %q failed with exit status %d; output:\n%s", cmd, status, out)
		}
	}
	if o.Wait != nil {
		if err := o.Wait(gctx, v); err != nil {
			return res, err
		}
	}
	if o.Ready != nil {
		wctx, cancel := context.WithTimeout(gctx, o.ReadyTimeout)
		err := o.Ready.Wait(wctx, v.Console())
		cancel()
		if err != nil {
			return res, fmt.Errorf("guest not ready: %w", err)
		}
	}
	devstate := filepath.Join(o.WorkDir, "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		return res, err
	}
	if err := fsys.Sync(); err != nil {
		return res, err
	}
	logf("snapshot taken; building the overlay\n")
	buildStart := time.Now()

	entries, order, stats, err := diff(ctx, fsys, b, o.Progress)
	if err != nil {
		return res, err
	}
	res.Diff = stats
	dev, err := os.ReadFile(devstate)
	if err != nil {
		return res, err
	}
	res.Overlay, err = writeOverlay(ctx, o, fsys, entries, order, dev)
	if err != nil {
		return res, err
	}
	res.Build = time.Since(buildStart)
	if o.SaveImages != "" {
		if err := saveImages(ctx, fsys, o.SaveImages); err != nil {
			return res, err
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func writeOverlay(ctx context.Context, o Options, fsys *cloudletfs.FS, entries []overlay.Entry, order []int, dev []byte) (overlay.Summary, error) {
	b := o.Base
	var baseID [32]byte
	if n, err := hex.Decode(baseID[:], []byte(b.ID)); err != nil || n != len(baseID) {
		return overlay.Summary{}, fmt.Errorf("base ID %q is not 32 hex bytes", b.ID)
	}
	cfg, err := json.Marshal(b.Manifest.VM)
	if err != nil {
		return overlay.Summary{}, err
	}
	imgs := fsys.Images()
	meta := overlay.Meta{BaseID: baseID, Codec: o.Codec, Config: cfg}
	for _, img := range imgs {
		meta.Images = append(meta.Images, overlay.Image{Name: img.Name(), Size: img.Size()})
	}
	return overlay.WriteFile(ctx, o.Output, o.WorkDir, meta, dev, entries, order, func(im uint8, i int64) ([]byte, error) {
		return readChunk(ctx, imgs[im], i)
	})
}

// saveImages writes the customised images as the VM left them, read through the store.
func saveImages(ctx context.Context, fsys *cloudletfs.FS, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, img := range fsys.Images() {
		f, err := os.OpenFile(filepath.Join(dir, img.Name()+".img"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<20)
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			n, err := img.ReadAt(ctx, buf, off)
			if err == nil {
				_, err = f.WriteAt(buf[:n], off)
			}
			if err != nil {
				f.Close()
				return fmt.Errorf("save %s: %w", img.Name(), err)
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

func indentOutput(s string) string {
	s = strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n")
	return "  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n"
}
