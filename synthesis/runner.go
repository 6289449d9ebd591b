package synthesis

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

// runner is the run of one synthesis session. Its steps fill its parts in order (origin and
// overlay, fetcher, cache and mount, VM); each step registers how to undo itself, and close
// undoes them in reverse order, whichever step failed.
type runner struct {
	o     Options // fixed after construction
	start time.Time

	// Set by the steps, in order; nil until their step has run.
	origin  origin.Origin
	window  *window // the origin, streaming what a resume needs ahead of the reads
	reader  *overlay.Reader
	devPath string
	fetcher *Fetcher
	fsys    *cloudletfs.FS
	mnt     *cloudletfs.Mount
	vm      *vm.VM
	undo    []func()

	mu sync.Mutex
	tl Timeline // guarded by mu
}

func newRunner(o Options) *runner {
	if o.VM.Host == nil {
		// One probe of QEMU serves the check below and the resume's own.
		o.VM.Host = vm.NewHost(o.VM.QEMU)
	}
	return &runner{o: o, start: time.Now(), tl: Timeline{}}
}

// run takes the session from the overlay's index to a running VM, and runs it until the
// event loop ends; whatever it set up is undone when it returns.
func (s *runner) run(ctx context.Context) error {
	defer s.close()
	// The host check (the kept answer, or a probe of QEMU) and QEMU's start (a tenth of a
	// second, as long as the index takes on a fast link) run beside the index's fetch, on a
	// mount that holds the images' reads until the index is in, so that neither delays the
	// first answer. QEMU does not start, and no blob is fetched, before the check has passed.
	check := s.startHostCheck(ctx)
	defer check.wait()
	if err := s.mount(); err != nil {
		return err
	}
	qemu := s.startQEMU(ctx, check)
	if err := s.openOverlay(ctx); err != nil {
		return err
	}
	if err := s.startFetcher(); err != nil {
		return err
	}
	if err := s.serve(); err != nil {
		return err
	}
	if err := check.wait(); err != nil {
		return err
	}
	s.emit("host_checked", fmt.Sprintf("check took %.3fs", check.took.Seconds()))
	s.fetcher.Start(ctx, s.fsys)
	s.onClose(s.fetcher.Close)
	if !s.o.EarlyStart {
		if err := s.waitComplete(ctx); err != nil {
			return err
		}
	}
	if err := s.resume(ctx, qemu); err != nil {
		return err
	}
	return s.loop(ctx)
}

// hostCheck is the check, running in the background, that this host can resume the base: its
// CPU model and features, machine type, QEMU version and devices. The resume checks again
// (from the same kept answer) and logs what cannot be known.
type hostCheck struct {
	done chan struct{}
	// Set before done is closed.
	err  error
	took time.Duration // how long it ran (a probe of QEMU, or the kept answer read)
}

func (s *runner) startHostCheck(ctx context.Context) *hostCheck {
	c := &hostCheck{done: make(chan struct{})}
	opts := s.o.VM
	opts.Config = s.o.Base.Manifest.VM
	id := s.o.Base.ID
	go func() {
		defer close(c.done)
		start := time.Now()
		if _, err := vm.CheckResume(ctx, opts); err != nil {
			c.err = vm.Refusal("base "+id, err)
		}
		c.took = time.Since(start)
	}()
	return c
}

// wait returns the check's verdict once it has one.
func (c *hostCheck) wait() error {
	<-c.done
	return c.err
}

// onClose registers an undo step.
func (s *runner) onClose(f func()) { s.undo = append(s.undo, f) }

// close undoes the steps that ran, last first.
func (s *runner) close() {
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i]()
	}
	s.undo = nil
}

// timeline is a copy of the events so far.
func (s *runner) timeline() Timeline {
	s.mu.Lock()
	defer s.mu.Unlock()
	tl := make(Timeline, len(s.tl))
	for k, v := range s.tl {
		tl[k] = v
	}
	return tl
}

// emit records a timeline event, with what the fetcher and the images report so far.
func (s *runner) emit(name, detail string) {
	e := Event{Name: name, Seconds: time.Since(s.start).Seconds(), Detail: detail}
	if s.fetcher != nil {
		e.Bytes = s.window.BytesRead()
		st := s.fetcher.Stats()
		e.Fetch = &st
	}
	if s.fsys != nil {
		e.Stall, e.Touched, e.Missed = map[string]float64{}, map[string]int64{}, map[string]int64{}
		for _, img := range s.fsys.Images() {
			st := img.Stats()
			e.Stall[img.Name()] = st.StallSeconds
			e.Touched[img.Name()], e.Missed[img.Name()] = st.OverlayTouched, st.OverlayMissed
		}
	}
	s.mu.Lock()
	s.tl[name] = e
	s.mu.Unlock()
	if s.o.OnEvent != nil {
		s.o.OnEvent(e)
	}
}

// openOverlay opens the origin (unless the caller gave one) and the overlay's index, checks it
// against the base, and writes the device state into the cache directory for QEMU.
func (s *runner) openOverlay(ctx context.Context) error {
	s.origin = s.o.Origin
	if s.origin == nil {
		src, err := origin.Open(ctx, s.o.Source, s.o.HTTP)
		if err != nil {
			return err
		}
		s.origin = src
	}
	w, r, err := openWindowed(ctx, s.origin, s.o.Base, s.o.CacheDir, s.o.Fetch.Store)
	if err != nil {
		return err
	}
	s.origin, s.window, s.reader = w, w, r
	s.onClose(func() { w.Close() })
	s.onClose(func() { r.Close() })
	dev, err := r.Devstate()
	if err != nil {
		return fmt.Errorf("%s: %w", s.origin, err)
	}
	if err := os.MkdirAll(s.o.CacheDir, 0o700); err != nil {
		return err
	}
	s.devPath = filepath.Join(s.o.CacheDir, "devstate")
	return os.WriteFile(s.devPath, dev, 0o600)
}

// startFetcher makes the fetcher over the overlay and the base's images; it starts fetching
// once cloudletfs is there to take the chunks.
func (s *runner) startFetcher() error {
	baseImgs, closeBase, err := s.o.Base.OpenImages()
	if err != nil {
		return err
	}
	s.onClose(closeBase)
	opts := s.o.Fetch
	opts.Bulk = opts.Bulk || !s.o.EarlyStart // no VM to serve first: stream it all
	s.fetcher = NewFetcher(s.reader, s.origin, baseImgs, opts)
	s.emit("index", fmt.Sprintf("overlay %s, %d blobs", s.reader.ID()[:12], len(s.reader.Index.Blobs)))
	return nil
}

// cacheConfig is the cloudletfs configuration of this session's cache: the base's images
// under the overlay's plans, with misses sent to the fetcher.
func (s *runner) cacheConfig() cloudletfs.Config {
	cfg := CacheConfig(s.o.Base, s.reader, s.o.CacheDir, s.fetcher)
	cfg.Identity = "synthesis " + s.reader.ID()
	cfg.DiscardModified = true
	return cfg
}

// mount mounts the session's images where QEMU (as whichever user it runs) can reach them,
// before the index that says what is in them: their names and sizes are the base's (an
// overlay for other sizes is refused when its index is read), and their reads wait for serve.
func (s *runner) mount() error {
	var user *cloudletfs.User
	if u := s.o.VM.RunAs; u != nil {
		user = &cloudletfs.User{UID: uint32(u.UID), GID: uint32(u.GID)}
	}
	mountDir, removeMountDir, err := cloudletfs.PrepareMountPoint(s.o.MountDir, cloudletfs.RunDir, user)
	if err != nil {
		return err
	}
	s.onClose(removeMountDir)
	var layout []cloudletfs.Layout
	for _, im := range ExpectFor(s.o.Base).Images {
		layout = append(layout, cloudletfs.Layout{Name: im.Name, Size: im.Size})
	}
	mnt, err := cloudletfs.MountPending(mountDir, layout, cloudletfs.MountOptions{User: user})
	if err != nil {
		return err
	}
	s.mnt = mnt
	// The FS goes after the mount that serves it, whenever serve opened it.
	s.onClose(func() {
		mnt.Unmount()
		if s.fsys != nil {
			s.fsys.Close()
		}
	})
	if s.o.OnMount != nil {
		return s.o.OnMount(mnt.Dir)
	}
	return nil
}

// serve opens the cache under the overlay's plans and serves it on the mount.
func (s *runner) serve() error {
	fsys, err := cloudletfs.Open(s.cacheConfig())
	if err != nil {
		return err
	}
	s.fsys = fsys
	return s.mnt.Serve(fsys)
}

// waitComplete waits for the whole overlay: the baseline without early start.
func (s *runner) waitComplete(ctx context.Context) error {
	select {
	case <-s.fetcher.Complete():
		s.emit("complete", "")
		return nil
	case <-s.fetcher.Failed():
		return fmt.Errorf("fetch overlay: %w", s.fetcher.Err())
	case <-ctx.Done():
		return ctx.Err()
	}
}
