package origin

import (
	"context"
	"fmt"
	"os"
	"time"
)

// spoolPoll is how often a read of a spool that has not reached its range looks again: short
// next to a link's latency, long enough to cost nothing while an upload streams.
const spoolPoll = 20 * time.Millisecond

// Spool is an upload that another process receives into a file (an Upload there): a read
// waits until the file has grown over its range. The file is written in order, so its size is
// how much arrived. If it stops growing for idle, the upload is taken as broken off.
type Spool struct {
	f    *os.File
	size int64
	idle time.Duration
}

// OpenSpool opens the spool at path, which will hold size bytes once the upload is complete.
func OpenSpool(path string, size int64, idle time.Duration) (*Spool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("upload spool: %w", err)
	}
	return &Spool{f: f, size: size, idle: idle}, nil
}

// ReadAt waits until [off, off+len(p)) is in the file.
func (s *Spool) ReadAt(ctx context.Context, p []byte, off int64) error {
	want := off + int64(len(p))
	if want > s.size {
		return fmt.Errorf("upload spool: bytes %d+%d beyond its %d", off, len(p), s.size)
	}
	last, since := int64(-1), time.Now()
	for {
		fi, err := s.f.Stat()
		if err != nil {
			return fmt.Errorf("upload spool: %w", err)
		}
		if fi.Size() >= want {
			_, err := s.f.ReadAt(p, off)
			return err
		}
		if fi.Size() != last {
			last, since = fi.Size(), time.Now()
		} else if time.Since(since) > s.idle {
			return fmt.Errorf("upload broke off after %d of %d bytes: nothing came for %s", last, s.size, s.idle)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for uploaded bytes %d+%d: %w", off, len(p), ctx.Err())
		case <-time.After(spoolPoll):
		}
	}
}

func (s *Spool) Size() int64    { return s.size }
func (s *Spool) String() string { return "upload" }
func (s *Spool) Close() error   { return s.f.Close() }
