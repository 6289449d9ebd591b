package cloudletfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
)

// Config describes a cloudletfs instance.
type Config struct {
	// Dir holds the cache files, presence maps and (in capture mode) the trace. It may be
	// reused across runs: what is durable there is served without fetching again.
	Dir    string
	Images []ImageConfig
	// Demander supplies pending chunks; nil when no chunk is pending.
	Demander Demander
	// Identity names what the cache belongs to (base and overlay IDs). A cache directory made
	// for another identity is refused, so a cache never serves another overlay's bytes.
	Identity string
	// DiscardModified drops chunks the VM wrote in an earlier run (see openImage).
	DiscardModified bool
	// Capture writes the access and modification traces to Dir/trace.json at Close.
	Capture bool
	// FlushInterval is how often cached chunks are made durable; 0 means 100 ms. Shorter
	// costs more fsyncs; longer means more refetching after a crash.
	FlushInterval time.Duration
	// Log receives what Open finds wrong in a reused cache (see ImageConfig.Expected); nil
	// logs to stderr.
	Log *log.Logger
	// Files are served read-only at the mount's root, beside the images (see File).
	Files []File
}

// FS is the set of images behind one mount, with their event streams.
type FS struct {
	cfg    Config
	images []*Image
	byName map[string]*Image
	ev     *streams
	lock   *os.File
	start  time.Time

	stop      context.CancelFunc
	flushDone chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// TraceFile is where capture mode writes its trace.
const TraceFile = "trace.json"

// Open opens (or creates) the cache in cfg.Dir and starts the durability flusher.
func Open(cfg Config) (*FS, error) {
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = defaultLog()
	}
	// The cache holds guest RAM and disk: this user's alone, also when an older version
	// made the directory open to others.
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cloudletfs cache: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cloudletfs cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cloudletfs cache: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("cloudletfs cache %s is in use by another mount", cfg.Dir)
	}
	if err := checkFiles(cfg.Files, cfg.Images); err != nil {
		lock.Close()
		return nil, err
	}
	f := &FS{cfg: cfg, byName: map[string]*Image{}, ev: newStreams(), lock: lock, start: time.Now()}
	if err := f.checkIdentity(); err != nil {
		lock.Close()
		return nil, err
	}
	for _, ic := range cfg.Images {
		if !validImageName(ic.Name) || f.byName[ic.Name] != nil {
			f.closeImages()
			return nil, fmt.Errorf("cloudletfs: bad or repeated image name %q", ic.Name)
		}
		img, err := openImage(ic, &f.cfg, f.ev)
		if err != nil {
			f.closeImages()
			return nil, err
		}
		f.images = append(f.images, img)
		f.byName[ic.Name] = img
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.stop, f.flushDone = cancel, make(chan struct{})
	go f.flushLoop(ctx)
	return f, nil
}

// checkIdentity records the cache's identity on first use and refuses a mismatch later.
func (f *FS) checkIdentity() error {
	var sizes []string
	for _, ic := range f.cfg.Images {
		sizes = append(sizes, fmt.Sprintf("%s=%d", ic.Name, ic.Size))
	}
	want := f.cfg.Identity + " " + strings.Join(sizes, ",") + "\n"
	path := filepath.Join(f.cfg.Dir, "identity")
	got, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return atomicfile.WriteFile(path, []byte(want))
	}
	if err != nil {
		return fmt.Errorf("cloudletfs cache: %w", err)
	}
	if string(got) != want {
		return fmt.Errorf("cloudletfs cache %s belongs to %q, not %q: use another cache directory or delete it",
			f.cfg.Dir, strings.TrimSpace(string(got)), strings.TrimSpace(want))
	}
	return nil
}

// Kept reports whether dir holds a cache from an earlier run (of any identity).
func Kept(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "identity"))
	return err == nil
}

func (f *FS) flushLoop(ctx context.Context) {
	defer close(f.flushDone)
	t := time.NewTicker(f.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.Sync()
		}
	}
}

// Sync makes every cached chunk of every image durable.
func (f *FS) Sync() error {
	var errs []error
	for _, img := range f.images {
		errs = append(errs, img.Sync())
	}
	return errors.Join(errs...)
}

// Image returns the named image, or nil.
func (f *FS) Image(name string) *Image { return f.byName[name] }

// Images returns the images in configuration order.
func (f *FS) Images() []*Image { return append([]*Image(nil), f.images...) }

// Deliver stores verified chunks of an image: data holds whole chunks from chunk c on (see
// Image.Deliver). The caller has checked their digests: cloudletfs trusts what it is given
// and only checks its place and size.
func (f *FS) Deliver(image string, c int64, data []byte) error {
	img := f.byName[image]
	if img == nil {
		return fmt.Errorf("cloudletfs: deliver to unknown image %q", image)
	}
	return img.Deliver(c, data)
}

// shutdown ends every request in flight or to come: stream followers see the end of their
// stream and chunk waiters an error. FUSE handlers blocked on either would otherwise keep
// the server (and an unmount) waiting forever.
func (f *FS) shutdown() {
	f.ev.close()
	for _, img := range f.images {
		img.stop()
	}
}

// Close stops the flusher, makes everything durable, ends the event streams and, in capture
// mode, writes the trace. Readers still waiting for chunks get an error.
func (f *FS) Close() error {
	f.closeOnce.Do(func() {
		f.stop()
		<-f.flushDone
		f.shutdown()
		errs := []error{f.closeImages()}
		if f.cfg.Capture {
			errs = append(errs, f.writeTrace())
		}
		f.lock.Close()
		f.closeErr = errors.Join(errs...)
	})
	return f.closeErr
}

func (f *FS) closeImages() error {
	var errs []error
	for _, img := range f.images {
		errs = append(errs, img.close())
	}
	return errors.Join(errs...)
}

// Trace is what capture mode records: the order of first access to chunks (the working set,
// for prefetch) and the chunks the VM modified, with times.
type Trace struct {
	Accessed []ChunkEvent `json:"accessed"`
	Modified []ChunkEvent `json:"modified"`
	Fetched  []ChunkEvent `json:"fetched"`
}

// Trace returns the events so far.
func (f *FS) Trace() Trace {
	return Trace{
		Accessed: f.ev.chunks[kindAccessed].snapshot(),
		Modified: f.ev.chunks[kindModified].snapshot(),
		Fetched:  f.ev.chunks[kindFetched].snapshot(),
	}
}

// ReadTrace reads a capture trace written at Close.
func ReadTrace(dir string) (Trace, error) {
	var t Trace
	b, err := os.ReadFile(filepath.Join(dir, TraceFile))
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("%s: %w", filepath.Join(dir, TraceFile), err)
	}
	return t, nil
}

func (f *FS) writeTrace() error {
	b, err := json.Marshal(f.Trace())
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(f.cfg.Dir, TraceFile), b)
}
