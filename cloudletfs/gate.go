package cloudletfs

import (
	"context"
	"errors"
	"sync"
)

// errUnmounted fails requests that waited for an FS that never came: the mount ended first.
var errUnmounted = errors.New("the mount ended before its FS was served")

// gate is "the FS behind a mount, once there": given at mount time (FS.Mount) or later
// (MountPending, then Serve). The nodes ask it for the FS on each request that needs one;
// until Serve, such a request waits on a channel select, with no goroutine of its own.
type gate struct {
	// Fixed after construction.
	layouts []Layout
	ready   chan struct{} // closed once fsys is set: fsys may then be read without mu
	gone    chan struct{} // closed when the mount ends: waiters give up

	mu    sync.Mutex
	fsys  *FS  // guarded by mu until ready is closed, fixed after
	ended bool // guarded by mu
}

func newGate(layouts []Layout) *gate {
	return &gate{layouts: layouts, ready: make(chan struct{}), gone: make(chan struct{})}
}

// servedGate is the gate of a mount whose FS is there from the start.
func servedGate(fsys *FS) *gate {
	g := newGate(fsys.layouts())
	g.fsys = fsys
	close(g.ready)
	return g
}

// wait returns the FS once it is there. The request's ctx (go-fuse cancels it when the
// caller is interrupted) or the end of the mount end the wait.
func (g *gate) wait(ctx context.Context) (*FS, error) {
	// Once served, serve even if the mount is ending: the FS's own shutdown fails what
	// must fail then, as for a mount that was never pending.
	if fsys := g.served(); fsys != nil {
		return fsys, nil
	}
	select {
	case <-g.ready:
		return g.fsys, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-g.gone:
		return nil, errUnmounted
	}
}

// served returns the FS if it is there, without waiting.
func (g *gate) served() *FS {
	select {
	case <-g.ready:
		return g.fsys
	default:
		return nil
	}
}

// image returns the i-th image, once the FS is there.
func (g *gate) image(ctx context.Context, i int) (*Image, error) {
	fsys, err := g.wait(ctx)
	if err != nil {
		return nil, err
	}
	return fsys.images[i], nil
}

// serve sets the FS and lets waiting requests proceed. The caller has checked its layout.
func (g *gate) serve(fsys *FS) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.ended:
		return errors.New("cloudletfs: serve: the mount is unmounted")
	case g.fsys != nil:
		return errors.New("cloudletfs: serve: the mount already has its FS")
	}
	g.fsys = fsys
	close(g.ready)
	return nil
}

// end marks the mount as ending: requests still waiting for an FS fail, and Serve is
// refused from now on. It returns the FS if the mount had one.
func (g *gate) end() *FS {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ended {
		g.ended = true
		close(g.gone)
	}
	return g.fsys
}
