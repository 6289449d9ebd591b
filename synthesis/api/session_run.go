package api

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// synthesise is the server's own session run: it opens the origin itself, so that the size
// the origin claims is checked against MaxOverlay before a byte of the overlay is read or a
// buffer sized by it is made, then hands the open origin to Run.
func (s *Server) synthesise(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
	if o.Origin == nil {
		src, err := origin.Open(ctx, o.Source, o.HTTP)
		if err != nil {
			return nil, err
		}
		o.Origin = src
	}
	if n := o.Origin.Size(); n > s.opts.MaxOverlay {
		o.Origin.Close()
		return nil, fmt.Errorf("the overlay claims %d bytes, over this server's limit of %d", n, s.opts.MaxOverlay)
	}
	return synthesis.Run(ctx, o)
}

// runGuarded runs one session and turns a panic in it into the session's error: one session's
// bug must not take down the server and every other VM. The stack goes to the server's log,
// the message to the client. The run's own deferred clean-ups have run by then.
func (s *Server) runGuarded(ctx context.Context, id string, o synthesis.Options) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.opts.Log.Printf("session %s: panic: %v\n%s", id, p, debug.Stack())
			err = fmt.Errorf("internal error (panic): %v", p)
		}
	}()
	_, err = s.opts.run(ctx, o)
	// A session cancelled for a reason (its upload failed) fails with that reason, whatever
	// Run made of the cancellation.
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	return err
}
