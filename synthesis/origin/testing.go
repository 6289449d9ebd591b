package origin

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// ShapedServer is a loopback HTTP origin for tests and benchmarks: it serves one file with
// range requests and an ETag, and can emulate a link (latency per request, bandwidth) and
// faults (dropped connections, a changed file, a corrupted byte). Counters tell what was
// asked.
type ShapedServer struct {
	*httptest.Server

	mu        sync.Mutex
	data      []byte
	files     map[string][]byte // more files at /NAME, behind the same link
	etag      string
	latency   time.Duration // added before each answer (one RTT)
	bytesPerS int64         // 0: unlimited
	link      *rate.Limiter // shared by all connections, like one real link
	drops     int           // connections still to drop mid-answer
	stalls    int           // answers still to stall mid-body (until the client gives up)
	changeAt  int           // change the file before request number changeAt (0: never)

	Requests atomic.Int64
	Bytes    atomic.Int64
}

// NewShapedServer serves data at /overlay.
func NewShapedServer(data []byte) *ShapedServer {
	s := &ShapedServer{data: data, etag: `"v1"`}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// URL of the overlay.
func (s *ShapedServer) URL() string { return s.Server.URL + "/overlay" }

// Add serves data at /name too, through the same emulated link, and returns its URL: a
// benchmark's peer fetches a disk image and a memory stream over one link.
func (s *ShapedServer) Add(name string, data []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string][]byte{}
	}
	s.files[name] = data
	return s.Server.URL + "/" + name
}

// Shape sets the emulated link: latency per request (an RTT) and bandwidth.
func (s *ShapedServer) Shape(latency time.Duration, bytesPerSecond int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency, s.bytesPerS = latency, bytesPerSecond
	s.link = nil
	if bytesPerSecond > 0 {
		// The bucket holds a millisecond of the link (16 KiB at least), as a kernel shaper's
		// does: a smaller one wakes the server for every 16 KiB write at 1 Gbit/s, CPU the
		// cloudlet under test shares on one machine and a remote origin would not take.
		s.link = rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(16<<10, bytesPerSecond/1000)))
	}
}

// DropNext makes the next n answers break off after part of their body.
func (s *ShapedServer) DropNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops = n
}

// StallNext makes the next n range answers send their headers and then nothing, keeping the
// connection open: a link that hangs.
func (s *ShapedServer) StallNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stalls = n
}

// ChangeBefore replaces the file (new content, new ETag) just before request number n.
func (s *ShapedServer) ChangeBefore(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changeAt = n
}

func (s *ShapedServer) serve(w http.ResponseWriter, r *http.Request) {
	n := int(s.Requests.Add(1))
	s.mu.Lock()
	if s.changeAt > 0 && n >= s.changeAt && s.etag == `"v1"` {
		s.data = append(bytes.Clone(s.data), "changed"...)
		s.etag = `"v2"`
	}
	data, etag, latency, link := s.data, s.etag, s.latency, s.link
	if r.URL.Path != "/overlay" {
		var ok bool
		if data, ok = s.files[strings.TrimPrefix(r.URL.Path, "/")]; !ok {
			s.mu.Unlock()
			http.NotFound(w, r)
			return
		}
	}
	probe := r.Header.Get("Range") == fmt.Sprintf("bytes=0-%d", headBytes-1)
	drop, stall := s.drops > 0 && !probe, s.stalls > 0 && !probe
	if drop {
		s.drops--
	} else if stall {
		s.stalls--
	}
	s.mu.Unlock()
	time.Sleep(latency)
	w.Header().Set("ETag", etag)
	var out http.ResponseWriter = w
	if link != nil || drop || stall {
		out = &shapedWriter{ResponseWriter: w, link: link, dropAfter: map[bool]int{true: 1000, false: -1}[drop], stall: stall, s: s, ctx: r.Context()}
	} else {
		out = &countingWriter{ResponseWriter: w, s: s}
	}
	http.ServeContent(out, r, "overlay", time.Unix(0, 0), bytes.NewReader(data))
}

type countingWriter struct {
	http.ResponseWriter
	s *ShapedServer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.s.Bytes.Add(int64(len(p))) // before the write, as in shapedWriter
	return c.ResponseWriter.Write(p)
}

// shapedWriter paces writes through the shared link and can break the connection after
// some bytes.
type shapedWriter struct {
	http.ResponseWriter
	link      *rate.Limiter
	dropAfter int  // -1: never
	stall     bool // send the headers, then hang until the client goes
	written   int
	s         *ShapedServer
	ctx       context.Context
}

func (w *shapedWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n := min(len(p), 16<<10)
		if w.stall {
			if f, ok := w.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			<-w.ctx.Done()
			return total, w.ctx.Err()
		}
		if w.dropAfter >= 0 && w.written+n > w.dropAfter {
			if f, ok := w.ResponseWriter.(http.Flusher); ok {
				w.ResponseWriter.Write(p[:w.dropAfter-w.written])
				f.Flush()
			}
			panic(http.ErrAbortHandler) // closes the connection mid-body
		}
		if w.link != nil {
			if err := w.link.WaitN(w.ctx, n); err != nil {
				return total, err
			}
		}
		// Counted before the write: a reader that has the bytes sees them counted.
		w.s.Bytes.Add(int64(n))
		m, err := w.ResponseWriter.Write(p[:n])
		w.written += m
		total += m
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// String describes the server's shape for logs.
func (s *ShapedServer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%s (latency %v, %d B/s)", s.URL(), s.latency, s.bytesPerS)
}

// RawServer answers each request (one per connection) with the bytes answer returns for it:
// a status line, headers and a body that net/http would never write itself, as a hostile or
// internal upstream might. It stops, and waits for its goroutines, when the test ends.
type RawServer struct {
	l        net.Listener
	wg       sync.WaitGroup
	Requests atomic.Int64
}

func NewRawServer(t testing.TB, host string, answer func(r *http.Request) string) *RawServer {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	s := &RawServer{l: l}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				r, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				s.Requests.Add(1)
				fmt.Fprint(c, answer(r))
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); s.wg.Wait() })
	return s
}

// URL is the address of path on the server.
func (s *RawServer) URL(path string) string { return "http://" + s.l.Addr().String() + path }
