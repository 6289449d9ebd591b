// Package synthesis rebuilds a custom VM on this cloudlet from a base and an overlay, and
// resumes it early: QEMU runs on cloudletfs while the overlay streams in behind it, with the
// chunks the VM touches fetched first.
//
// Data flows one way: origin (file, HTTP range) → Fetcher (working set, demand misses first,
// then prefetch order; blob and chunk digests checked) → cloudletfs (cache over the base) →
// QEMU.
//
// Run is one session: a runner opens the origin and the overlay, mounts cloudletfs, starts
// the fetcher, resumes the VM and runs its event loop. Origins live in synthesis/origin, the
// HTTP API that runs sessions for clients in synthesis/api, the process that runs one of them
// apart from the server (and outlives it) in synthesis/supervisor.
package synthesis

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

// Options describe one synthesis.
type Options struct {
	Base   *base.Base
	Source string // overlay file or URL
	// Origin, if set, is used instead of opening Source (an upload in progress).
	Origin origin.Origin
	HTTP   origin.HTTPOptions
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
	// OnMount, if set, is told where cloudletfs was mounted, before QEMU starts: whoever
	// finds the session's process dead can clear the mount it left.
	OnMount func(dir string) error
	// OnTrace, if set, receives cloudletfs's access trace ProfileTail after the probe's first
	// answer (for working-set profiling).
	OnTrace     func(cloudletfs.Trace)
	ProfileTail time.Duration
}

// Event is a point on the synthesis timeline.
type Event struct {
	Name    string  `json:"event"` // index, host_checked, resumed, first_answer, complete, stopped
	Seconds float64 `json:"t_s"`   // since the start
	Bytes   int64   `json:"bytes_fetched"`
	// Stall is the time guest reads spent waiting for chunks so far, by image.
	Stall map[string]float64 `json:"stall_s,omitempty"`
	// Touched counts the overlay's chunks the guest read or wrote so far, by image; Missed
	// those of them that were not local when first touched (the guest waited for them).
	Touched map[string]int64 `json:"overlay_touched,omitempty"`
	Missed  map[string]int64 `json:"overlay_missed,omitempty"`
	Fetch   *FetchStats      `json:"fetch,omitempty"`
	Detail  string           `json:"detail,omitempty"`
}

// Timeline is every event of a run, by name.
type Timeline map[string]Event

// Run synthesises and runs the VM until ctx ends, the VM stops, the fetch fails, or (with
// ExitWhenComplete) the work is done. A failed fetch pauses the VM and returns the reason:
// the guest never runs on bytes that were not verified.
func Run(ctx context.Context, o Options) (Timeline, error) {
	r := newRunner(o)
	err := r.run(ctx)
	return r.timeline(), err
}

// ExpectFor is what overlay.Open checks an overlay's index head against, before it decodes the
// entries: the base's ID and its disk and memory images.
func ExpectFor(b *base.Base) overlay.Expect {
	return overlay.Expect{BaseID: b.ID, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size},
	}}
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
