package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/registry"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

// probeTimeout bounds the wait for a session's first answer, as the server's own runs do.
const probeTimeout = 5 * time.Minute

// shutdownGrace is how long the control socket's last answers (the end of event streams, the
// answer to a stop) get once the session ended.
const shutdownGrace = 5 * time.Second

// supervisor is one session's process: it runs the synthesis and answers on the socket.
type supervisor struct {
	dir    Dir                     // fixed after construction
	cancel context.CancelCauseFunc // stops the session; a cause becomes its error
	ended  chan struct{}           // closed once the end is recorded
	log    io.Writer

	mu       sync.Mutex
	timeline []synthesis.Event // guarded by mu
	end      *State            // guarded by mu; nil while running
	changed  chan struct{}     // guarded by mu; closed and replaced on each change
}

// Main runs the session in dir until it ends; ending ctx stops it. Its events go to the
// timeline file and to the socket's streams, its end to the state file. log gets the
// driver's notes.
func Main(ctx context.Context, dir Dir, store *base.Store, log io.Writer) error {
	req, err := dir.ReadRequest()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s := &supervisor{dir: dir, cancel: cancel, log: log, ended: make(chan struct{}), changed: make(chan struct{})}
	os.Remove(dir.Socket()) // a dead supervisor's
	l, err := net.Listen("unix", dir.Socket())
	if err != nil {
		return fmt.Errorf("session %s: control socket: %w", dir.ID(), err)
	}
	if err := os.Chmod(dir.Socket(), 0o600); err != nil {
		l.Close()
		return fmt.Errorf("session %s: control socket: %w", dir.ID(), err)
	}
	hs := &http.Server{Handler: s.handler()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		hs.Serve(l)
	}()
	st := s.runGuarded(ctx, req, store, log)
	werr := dir.WriteState(st)
	s.finish(st)
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	hs.Shutdown(sctx)
	scancel()
	wg.Wait()
	os.Remove(dir.Socket())
	return werr
}

// runGuarded runs the session and says how it ended; a panic fails the session, with its
// stack in the log.
func (s *supervisor) runGuarded(ctx context.Context, req Request, store *base.Store, log io.Writer) (st State) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(log, "session %s: panic: %v\n%s", s.dir.ID(), p, debug.Stack())
			st = State{State: "failed", Error: fmt.Sprintf("internal error (panic): %v", p)}
		}
	}()
	err := s.run(ctx, req, store, log)
	// A session stopped for a reason (its upload failed) fails with that reason; stopped
	// without one, it is stopped, whatever the run made of the cancellation.
	if cause := context.Cause(ctx); cause != nil {
		if errors.Is(cause, context.Canceled) {
			err = nil
		} else {
			err = cause
		}
	}
	if err != nil {
		fmt.Fprintf(log, "session %s failed: %v\n", s.dir.ID(), err)
		return State{State: "failed", Error: err.Error()}
	}
	return State{State: "stopped"}
}

// run opens the overlay's origin, checks the size it claims, and runs the synthesis.
func (s *supervisor) run(ctx context.Context, req Request, store *base.Store, log io.Writer) error {
	b, err := store.Get(req.Base)
	if err != nil {
		return err
	}
	o, err := s.options(req, b, log)
	o.VM.Host = store.Host() // the server's answer, or the previous session's: no probe
	if err != nil {
		return err
	}
	if req.UploadSize > 0 {
		o.Origin, err = origin.OpenSpool(s.dir.Spool(), req.UploadSize, req.UploadIdle)
	} else {
		o.Origin, err = origin.Open(ctx, o.Source, o.HTTP)
	}
	if err != nil {
		return err
	}
	if n := o.Origin.Size(); n > req.MaxOverlay {
		o.Origin.Close()
		return fmt.Errorf("the overlay claims %d bytes, over this server's limit of %d", n, req.MaxOverlay)
	}
	if chunks := openChunks(req, s.dir, log); chunks != nil {
		defer chunks.Close()
		o.Fetch.Store = chunks
	}
	_, err = synthesis.Run(ctx, o)
	return err
}

// openChunks opens the chunk cache the request names, if any. The cache only saves fetching:
// a session runs without it rather than fail.
func openChunks(req Request, dir Dir, log io.Writer) *chunkstore.Store {
	if req.ChunkStore == "" {
		return nil
	}
	chunks, err := chunkstore.Open(req.ChunkStore, req.ChunkStoreBytes)
	if err != nil {
		fmt.Fprintf(log, "session %s: no chunk cache: %v\n", dir.ID(), err)
		return nil
	}
	return chunks
}

// options are the synthesis options of the request.
func (s *supervisor) options(req Request, b *base.Base, log io.Writer) (synthesis.Options, error) {
	vmo := vm.Options{Accel: req.VM.Accel, Driver: req.VM.Driver, Libvirt: req.VM.Libvirt, Network: req.VM.Network,
		RunAs: req.VM.RunAs, Log: log, Name: s.dir.ID(), Forwards: req.Forwards}
	o := synthesis.Options{Base: b, Source: req.URL, CacheDir: s.dir.Cache(), MountDir: s.dir.Mount(), VM: vmo,
		HTTP: origin.HTTPOptions{Guard: netguard.New(req.AllowOrigins...), OCI: origin.OCIOptions{
			Registry: registry.Options{PlainHTTP: req.Registry.PlainHTTP, DockerConfig: req.Registry.DockerConfig}}},
		EarlyStart: req.EarlyStart, Fetch: synthesis.FetchOptions{BytesPerSecond: req.Bandwidth},
		ProbeTimeout: probeTimeout, OnEvent: s.record, OnMount: s.dir.recordMount}
	if req.Probe != "" {
		pr, err := probe.Parse(req.Probe)
		if err != nil {
			return o, fmt.Errorf("session %s: %w", s.dir.ID(), err)
		}
		o.Probe = &pr
	}
	return o, nil
}

// record appends an event to the timeline, on disk first.
func (s *supervisor) record(e synthesis.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.dir.appendEvent(e); err != nil {
		fmt.Fprintln(s.log, err)
	}
	s.timeline = append(s.timeline, e)
	close(s.changed)
	s.changed = make(chan struct{})
}

// finish records the session's end for the streams.
func (s *supervisor) finish(st State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.end = &st
	close(s.changed)
	s.changed = make(chan struct{})
	close(s.ended)
}

// since is the events from the n-th on, the end if there is one, and a channel closed on the
// next change.
func (s *supervisor) since(n int) ([]synthesis.Event, *State, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var events []synthesis.Event
	if n < len(s.timeline) {
		events = append(events, s.timeline[n:]...)
	}
	return events, s.end, s.changed
}
