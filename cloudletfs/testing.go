package cloudletfs

import (
	"fmt"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// MemSource is an in-memory Demander for tests and benchmarks. It delivers chunks of the
// images' full contents to FS, after Delay, and counts demands per chunk. With Hold set, it
// queues demands until Release, so a test can pile readers onto pending chunks.
type MemSource struct {
	Data  map[string][]byte // full image contents by image name
	Delay time.Duration
	Hold  bool

	mu      sync.Mutex
	fs      *FS
	demands map[string]map[int64]int
	held    []heldDemand
	errs    []error
}

type heldDemand struct {
	image string
	c     int64
}

// Attach sets the FS to deliver to; call it after Open, before any read.
func (s *MemSource) Attach(fs *FS) {
	s.mu.Lock()
	s.fs = fs
	s.mu.Unlock()
}

// Demand records the request and delivers the chunk (now, later or on Release).
func (s *MemSource) Demand(image string, c int64, prio Priority) {
	s.mu.Lock()
	if s.demands == nil {
		s.demands = map[string]map[int64]int{}
	}
	if s.demands[image] == nil {
		s.demands[image] = map[int64]int{}
	}
	s.demands[image][c]++
	hold := s.Hold
	if hold {
		s.held = append(s.held, heldDemand{image, c})
	}
	s.mu.Unlock()
	if !hold {
		go s.deliver(image, c)
	}
}

// Release delivers every held demand and stops holding.
func (s *MemSource) Release() {
	s.mu.Lock()
	held := s.held
	s.held, s.Hold = nil, false
	s.mu.Unlock()
	for _, h := range held {
		go s.deliver(h.image, h.c)
	}
}

func (s *MemSource) deliver(image string, c int64) {
	if s.Delay > 0 {
		time.Sleep(s.Delay)
	}
	s.mu.Lock()
	fs := s.fs
	s.mu.Unlock()
	if err := fs.Deliver(image, c, s.Chunk(image, c)); err != nil && err != errClosed {
		s.mu.Lock()
		s.errs = append(s.errs, err)
		s.mu.Unlock()
	}
}

// Chunk returns the bytes of chunk c of an image.
func (s *MemSource) Chunk(image string, c int64) []byte {
	d := s.Data[image]
	off := c * chunk.Size
	return d[off:min(off+chunk.Size, int64(len(d)))]
}

// Demands returns how often chunk c of image was demanded.
func (s *MemSource) Demands(image string, c int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.demands[image][c]
}

// TotalDemands is the number of demand requests so far.
func (s *MemSource) TotalDemands() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.demands {
		for _, v := range m {
			n += v
		}
	}
	return n
}

// Err reports delivery failures.
func (s *MemSource) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		return fmt.Errorf("%d deliveries failed, first: %w", len(s.errs), s.errs[0])
	}
	return nil
}
