package cloudletfs

import (
	"context"
	"errors"
	"sync"
)

// errUnmounted fails requests that waited for an FS that never came: the mount ended first.
var errUnmounted = errors.New("the mount ended before its FS was served")

// source is "the FS behind a mount, once there": given at mount time (FS.Mount) or later
// (MountPending, then Serve). The nodes ask it for the FS on each request that needs one;
// until Serve, such a request waits on a channel select, with no goroutine of its own.
type source struct {
	// Fixed after construction.
	layouts []Layout
	ready   chan struct{} // closed once fsys is set: fsys may then be read without mu
	gone    chan struct{} // closed when the mount ends: waiters give up

	mu    sync.Mutex
	fsys  *FS  // guarded by mu until ready is closed, fixed after
	ended bool // guarded by mu
}

func newSource(layouts []Layout) *source {
	return &source{layouts: layouts, ready: make(chan struct{}), gone: make(chan struct{})}
}

// servedSource is the source of a mount whose FS is there from the start.
func servedSource(fsys *FS) *source {
	s := newSource(fsys.layouts())
	s.fsys = fsys
	close(s.ready)
	return s
}

// wait returns the FS once it is there. The request's ctx (go-fuse cancels it when the
// caller is interrupted) or the end of the mount end the wait.
func (s *source) wait(ctx context.Context) (*FS, error) {
	// Once served, serve even if the mount is ending: the FS's own shutdown fails what
	// must fail then, as for a mount that was never pending.
	if fsys := s.served(); fsys != nil {
		return fsys, nil
	}
	select {
	case <-s.ready:
		return s.fsys, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.gone:
		return nil, errUnmounted
	}
}

// served returns the FS if it is there, without waiting.
func (s *source) served() *FS {
	select {
	case <-s.ready:
		return s.fsys
	default:
		return nil
	}
}

// image returns the i-th image, once the FS is there.
func (s *source) image(ctx context.Context, i int) (*Image, error) {
	fsys, err := s.wait(ctx)
	if err != nil {
		return nil, err
	}
	return fsys.images[i], nil
}

// serve sets the FS and lets waiting requests proceed. The caller has checked its layout.
func (s *source) serve(fsys *FS) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ended:
		return errors.New("cloudletfs: serve: the mount is unmounted")
	case s.fsys != nil:
		return errors.New("cloudletfs: serve: the mount already has its FS")
	}
	s.fsys = fsys
	close(s.ready)
	return nil
}

// end marks the mount as ending: requests still waiting for an FS fail, and Serve is
// refused from now on. It returns the FS if the mount had one.
func (s *source) end() *FS {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.ended = true
		close(s.gone)
	}
	return s.fsys
}
