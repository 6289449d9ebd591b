package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Upload is an overlay that a client is still pushing: the bytes land in a file as they
// arrive, and a read waits until its range is there. Overlays are written in prefetch order,
// so the stream brings the index, then the working set, then the rest, just as a synthesiser
// wants them.
type Upload struct {
	f    *os.File
	size int64

	mu      sync.Mutex
	written int64
	err     error         // the upload's failure, once it failed
	changed chan struct{} // closed and replaced on progress
}

// NewUpload stores an upload of size bytes in a new file at path.
func NewUpload(path string, size int64) (*Upload, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &Upload{f: f, size: size, changed: make(chan struct{})}, nil
}

// Receive copies the upload from r until size bytes arrived; a short or failed stream fails
// every waiting and future read.
func (u *Upload) Receive(r io.Reader) error {
	buf := make([]byte, 256<<10)
	for {
		u.mu.Lock()
		done := u.written
		u.mu.Unlock()
		if done == u.size {
			return nil
		}
		n, err := r.Read(buf[:min(int64(len(buf)), u.size-done)])
		if n > 0 {
			if _, werr := u.f.WriteAt(buf[:n], done); werr != nil {
				return u.fail(fmt.Errorf("store upload: %w", werr))
			}
			u.progress(int64(n), nil)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			u.mu.Lock()
			complete := u.written == u.size
			u.mu.Unlock()
			if complete {
				return nil
			}
			return u.fail(fmt.Errorf("upload broke off after %d of %d bytes: %w", done+int64(n), u.size, err))
		}
	}
}

func (u *Upload) fail(err error) error {
	u.progress(0, err)
	return err
}

func (u *Upload) progress(n int64, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.written += n
	if err != nil && u.err == nil {
		u.err = err
	}
	close(u.changed)
	u.changed = make(chan struct{})
}

// ReadAt waits until [off, off+len(p)) has arrived.
func (u *Upload) ReadAt(ctx context.Context, p []byte, off int64) error {
	for {
		u.mu.Lock()
		have, err, changed := u.written, u.err, u.changed
		u.mu.Unlock()
		if have >= off+int64(len(p)) {
			_, rerr := u.f.ReadAt(p, off)
			return rerr
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for uploaded bytes %d+%d: %w", off, len(p), ctx.Err())
		case <-changed:
		}
	}
}

func (u *Upload) Size() int64    { return u.size }
func (u *Upload) String() string { return "upload" }

// Close closes the file; the caller removes it.
func (u *Upload) Close() error { return u.f.Close() }
