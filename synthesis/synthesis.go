// Package synthesis rebuilds a custom VM on this cloudlet from a base and an overlay, and
// resumes it early: QEMU runs on cloudletfs while the overlay streams in behind it, with the
// chunks the VM touches fetched first.
//
// Data flows one way: origin (file, HTTP range) → Fetcher (working set, demand misses first,
// then prefetch order; blob and chunk digests checked) → cloudletfs (cache over the base) →
// QEMU.
package synthesis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

// Options describe one synthesis.
type Options struct {
	Base   *base.Base
	Source string // overlay file or URL
	// Origin, if set, is used instead of opening Source (an upload in progress).
	Origin Origin
	HTTP   HTTPOptions
	Fetch  FetchOptions
	// CacheDir holds the materialised images; reusing it after a crash continues where the
	// last run stopped. MountDir is where cloudletfs is mounted (in cloudletfs.RunDir
	// instead when QEMU runs as another user, who must reach it).
	CacheDir, MountDir string
	// VM carries the run options (forwards, accelerator, logs).
	VM vm.Options
	// EarlyStart resumes the VM at once; without it, everything is fetched first (the
	// Elijah baseline).
	EarlyStart   bool
	Probe        *probe.Probe
	ProbeTimeout time.Duration
	// ExitWhenComplete ends the run once the probe has answered and the overlay is
	// complete, instead of running the VM until ctx ends.
	ExitWhenComplete bool
	// OnEvent receives each timeline event as it happens.
	OnEvent func(Event)
	// OnTrace, if set, receives cloudletfs's access trace ProfileTail after the probe's first
	// answer (for working-set profiling).
	OnTrace     func(cloudletfs.Trace)
	ProfileTail time.Duration
}

// Event is a point on the synthesis timeline.
type Event struct {
	Name    string  `json:"event"` // index, resumed, first_answer, complete, stopped
	Seconds float64 `json:"t_s"`   // since the start
	Bytes   int64   `json:"bytes_fetched"`
	// Stall is the time guest reads spent waiting for chunks so far, by image.
	Stall  map[string]float64 `json:"stall_s,omitempty"`
	Fetch  *FetchStats        `json:"fetch,omitempty"`
	Detail string             `json:"detail,omitempty"`
}

// Timeline is every event of a run, by name.
type Timeline map[string]Event

// Run synthesises and runs the VM until ctx ends, the VM stops, the fetch fails, or (with
// ExitWhenComplete) the work is done. A failed fetch pauses the VM and returns the reason:
// the guest never runs on bytes that were not verified.
func Run(ctx context.Context, o Options) (Timeline, error) {
	start := time.Now()
	tl := Timeline{}
	var mu sync.Mutex
	var fetcher *Fetcher
	var fsys *cloudletfs.FS
	emit := func(name, detail string) {
		e := Event{Name: name, Seconds: time.Since(start).Seconds(), Detail: detail}
		if fetcher != nil {
			e.Bytes = fetcher.BytesFetched()
			st := fetcher.Stats()
			e.Fetch = &st
		}
		if fsys != nil {
			e.Stall = map[string]float64{}
			for _, img := range fsys.Images() {
				e.Stall[img.Name()] = img.Stats().StallSeconds
			}
		}
		mu.Lock()
		tl[name] = e
		mu.Unlock()
		if o.OnEvent != nil {
			o.OnEvent(e)
		}
	}

	origin := o.Origin
	if origin == nil {
		var err error
		if origin, err = OpenOrigin(ctx, o.Source, o.HTTP); err != nil {
			return tl, err
		}
	}
	defer origin.Close()
	r, err := overlay.Open(readerAt{ctx, origin}, origin.Size(), ExpectFor(o.Base))
	if err != nil {
		return tl, fmt.Errorf("%s: %w", origin, err)
	}
	defer r.Close()
	if err := CheckOverlay(r, o.Base); err != nil {
		return tl, err
	}
	dev, err := r.Devstate()
	if err != nil {
		return tl, fmt.Errorf("%s: %w", origin, err)
	}
	if err := os.MkdirAll(o.CacheDir, 0o700); err != nil {
		return tl, err
	}
	devPath := filepath.Join(o.CacheDir, "devstate")
	if err := os.WriteFile(devPath, dev, 0o600); err != nil {
		return tl, err
	}
	baseImgs, closeBase, err := o.Base.OpenImages()
	if err != nil {
		return tl, err
	}
	defer closeBase()
	fetcher = NewFetcher(r, origin, baseImgs, o.Fetch)
	emit("index", fmt.Sprintf("overlay %s, %d blobs", r.ID()[:12], len(r.Index.Blobs)))

	plans := Plans(r.Index)
	b := o.Base
	fsys, err = cloudletfs.Open(cloudletfs.Config{
		Dir:             o.CacheDir,
		Identity:        "synthesis " + r.ID(),
		DiscardModified: true,
		Demander:        fetcher,
		Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: r.Index.Images[0].Size, Base: b.Path(base.DiskFile), Plan: plans[0]},
			{Name: "memory", Size: r.Index.Images[1].Size, Base: b.Path(base.MemoryFile), Plan: plans[1]},
		},
	})
	if err != nil {
		return tl, err
	}
	defer fsys.Close()
	// QEMU's user, if another, gets the images, and a mount point it can reach.
	var user *cloudletfs.User
	if u := o.VM.RunAs; u != nil {
		user = &cloudletfs.User{UID: uint32(u.UID), GID: uint32(u.GID)}
	}
	mountDir, removeMountDir, err := cloudletfs.PrepareMountPoint(o.MountDir, cloudletfs.RunDir, user)
	if err != nil {
		return tl, err
	}
	defer removeMountDir()
	mnt, err := fsys.Mount(mountDir, cloudletfs.MountOptions{User: user})
	if err != nil {
		return tl, err
	}
	defer mnt.Unmount()
	fetcher.Start(ctx, fsys)
	defer fetcher.Close()

	if !o.EarlyStart {
		select {
		case <-fetcher.Complete():
			emit("complete", "")
		case <-fetcher.Failed():
			return tl, fmt.Errorf("fetch overlay: %w", fetcher.Err())
		case <-ctx.Done():
			return tl, ctx.Err()
		}
	}

	opts := o.VM
	bo := b.VMOptions()
	opts.Config, opts.Kernel, opts.Initrd = bo.Config, bo.Kernel, bo.Initrd
	opts.Disk = vm.Disk{Path: filepath.Join(mnt.Dir, "disk/image")}
	opts.Memory = vm.Memory{Path: filepath.Join(mnt.Dir, "memory/image"), Share: false}
	opts.ServedByCaller = true
	v, release, err := resumeUnlessFailed(ctx, opts, devPath, fetcher)
	if err != nil {
		return tl, err
	}
	defer release()
	defer v.Stop(context.WithoutCancel(ctx))
	emit("resumed", fmt.Sprintf("%s, %s", v, v.Accel()))

	answered := make(chan error, 1)
	if o.Probe != nil {
		go func() {
			pctx, cancel := context.WithTimeout(ctx, o.ProbeTimeout)
			defer cancel()
			answered <- o.Probe.Wait(pctx, v.Console())
		}()
	}
	var traceTimer <-chan time.Time
	complete, gotAnswer := !o.EarlyStart, o.Probe == nil
	completeCh := fetcher.Complete()
	if complete {
		completeCh = nil
	}
	for {
		if o.ExitWhenComplete && complete && gotAnswer {
			return tl, nil
		}
		select {
		case <-completeCh:
			complete, completeCh = true, nil
			emit("complete", "")
		case err := <-answered:
			if err != nil {
				return tl, fmt.Errorf("no answer from the VM: %w", err)
			}
			gotAnswer = true
			emit("first_answer", o.Probe.String())
			if o.OnTrace != nil {
				traceTimer = time.After(o.ProfileTail)
			}
		case <-traceTimer:
			traceTimer = nil
			o.OnTrace(fsys.Trace())
		case <-fetcher.Failed():
			return tl, haltOnFailure(ctx, v, fetcher.Err())
		case <-v.Done():
			if errors.Is(v.Err(), vm.ErrStoppedOutside) {
				emit("stopped", v.Err().Error())
				return tl, nil
			}
			if v.Err() != nil {
				return tl, fmt.Errorf("the VM stopped: %w", v.Err())
			}
			return tl, nil
		case <-ctx.Done():
			return tl, nil
		}
	}
}

// ExpectFor is what overlay.Open checks an overlay's index head against, before it decodes the
// entries: the base's ID and its disk and memory images.
func ExpectFor(b *base.Base) overlay.Expect {
	return overlay.Expect{BaseID: b.ID, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size},
	}}
}

// resumeUnlessFailed resumes the VM, and gives up, stopping QEMU, if the fetch fails meanwhile:
// the resume may wait in a read of a chunk that will never come, and QEMU's monitor with it.
// The VM lives until ctx ends or release is called.
func resumeUnlessFailed(ctx context.Context, opts vm.Options, devPath string, f *Fetcher) (*vm.VM, context.CancelFunc, error) {
	vmCtx, cancel := context.WithCancel(ctx)
	resumed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-f.Failed():
			cancel()
		case <-resumed:
		}
	}()
	v, err := vm.Resume(vmCtx, opts, devPath)
	close(resumed)
	wg.Wait()
	if err != nil {
		cancel()
		if f.Err() != nil {
			return nil, nil, fmt.Errorf("fetch overlay: %w; the VM was stopped while it resumed", f.Err())
		}
		return nil, nil, err
	}
	return v, cancel, nil
}

// CheckOverlay refuses an overlay made on another base, for other images, or for another VM
// configuration.
func CheckOverlay(r *overlay.Reader, b *base.Base) error {
	if err := r.CheckBase(b.ID); err != nil {
		return err
	}
	ix := r.Index
	if len(ix.Images) != 2 || ix.Images[0].Name != "disk" || ix.Images[1].Name != "memory" ||
		ix.Images[0].Size != b.Manifest.Files[base.DiskFile].Size || ix.Images[1].Size != b.Manifest.Files[base.MemoryFile].Size {
		return fmt.Errorf("overlay %s: its images do not match base %s's disk and memory", r.ID()[:12], b.ID)
	}
	var cfg vm.Config
	if err := json.Unmarshal(ix.Config, &cfg); err != nil {
		return fmt.Errorf("overlay %s: VM config: %w", r.ID()[:12], err)
	}
	want, _ := json.Marshal(b.Manifest.VM)
	got, _ := json.Marshal(cfg)
	if string(want) != string(got) {
		return fmt.Errorf("overlay %s: VM config %s differs from the base's %s", r.ID()[:12], got, want)
	}
	return nil
}

// pauseTimeout bounds pausing a VM after a failed fetch: a vCPU blocked in a fault on a chunk
// that will never come cannot pause.
const pauseTimeout = 5 * time.Second

// haltOnFailure pauses the VM after a failed fetch, so that it never runs on, and says so. If
// it cannot be paused, it is stopped.
func haltOnFailure(ctx context.Context, v *vm.VM, cause error) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pauseTimeout)
	defer cancel()
	if err := v.Pause(pctx); err != nil {
		v.Kill()
		return fmt.Errorf("fetch overlay: %w; the VM was stopped: it could not be paused while it waited for chunks that will not come", cause)
	}
	return fmt.Errorf("fetch overlay: %w; the VM was paused", cause)
}
