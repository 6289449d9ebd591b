package supervisor

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/cloudlet/cloudlet/synthesis"
)

// Fake answers on a session directory's control socket as a supervisor does, without running
// a synthesis: a test records events and ends the session by hand, and sees the stops it gets.
type Fake struct {
	s   *supervisor
	ctx context.Context
	hs  *http.Server
	wg  sync.WaitGroup
}

// NewFake serves the control socket of the session in d (made with Create) until Close.
func NewFake(d Dir) (*Fake, error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	l, err := net.Listen("unix", d.Socket())
	if err != nil {
		cancel(nil)
		return nil, err
	}
	f := &Fake{s: &supervisor{dir: d, cancel: cancel, log: io.Discard, ended: make(chan struct{}), changed: make(chan struct{})}, ctx: ctx}
	f.hs = &http.Server{Handler: f.s.handler()}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.hs.Serve(l)
	}()
	return f, nil
}

// Record adds an event to the session's timeline, as a run does.
func (f *Fake) Record(e synthesis.Event) { f.s.record(e) }

// Stopped is closed once the session was asked to stop; Cause is why.
func (f *Fake) Stopped() <-chan struct{} { return f.ctx.Done() }
func (f *Fake) Cause() error             { return context.Cause(f.ctx) }

// End ends the session, as its run does: the state file, then the streams.
func (f *Fake) End(st State) error {
	err := f.s.dir.WriteState(st)
	f.s.finish(st)
	return err
}

// Close stops answering, as a supervisor's death does.
func (f *Fake) Close() {
	f.hs.Close()
	f.wg.Wait()
	f.s.cancel(nil)
}

// AppendEvent adds an event to the session's timeline file, as a supervisor does.
func AppendEvent(d Dir, e synthesis.Event) error { return d.appendEvent(e) }
