package origin

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"
)

func testData(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(1)).Read(b)
	return b
}

func TestHTTPOriginRanges(t *testing.T) {
	data := testData(3 << 20)
	s := NewShapedServer(data)
	defer s.Close()
	ctx := context.Background()
	o, err := Open(ctx, s.URL(), HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != int64(len(data)) {
		t.Fatalf("size %d, want %d", o.Size(), len(data))
	}
	tests := []struct{ off, n int64 }{{0, 1}, {100, 1 << 20}, {int64(len(data)) - 10, 10}}
	for _, tc := range tests {
		buf := make([]byte, tc.n)
		if err := o.ReadAt(ctx, buf, tc.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, data[tc.off:tc.off+tc.n]) {
			t.Fatalf("range %d+%d differs", tc.off, tc.n)
		}
	}
}

// TestHTTPOriginResumesDrops: three connections break mid-body; the read resumes from the
// last byte and returns the right bytes.
func TestHTTPOriginResumesDrops(t *testing.T) {
	data := testData(1 << 20)
	s := NewShapedServer(data)
	defer s.Close()
	ctx := context.Background()
	o, err := Open(ctx, s.URL(), HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.DropNext(3)
	buf := make([]byte, 500000)
	if err := o.ReadAt(ctx, buf, 1234); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[1234:1234+500000]) {
		t.Fatal("bytes differ after resumed drops")
	}
	if n := s.Requests.Load(); n != 5 { // probe + 3 broken + 1 whole
		t.Fatalf("%d requests, want 5", n)
	}
}

func TestHTTPOriginErrors(t *testing.T) {
	data := testData(1 << 16)
	ctx := context.Background()
	t.Run("changed file", func(t *testing.T) {
		s := NewShapedServer(data)
		defer s.Close()
		o, err := Open(ctx, s.URL(), HTTPOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.ChangeBefore(2)
		err = o.ReadAt(ctx, make([]byte, 100), headBytes) // past what came with the probe
		if !errors.Is(err, ErrChanged) {
			t.Fatalf("read of a changed file: %v", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		s := NewShapedServer(data)
		defer s.Close()
		_, err := Open(ctx, s.Server.URL+"/nope", HTTPOptions{})
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Fatalf("404: %v", err)
		}
	})
	t.Run("dead origin", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		start := time.Now()
		_, err := Open(ctx, "http://"+addr+"/x", HTTPOptions{RetryFor: 500 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), "refused") || time.Since(start) > 5*time.Second {
			t.Fatalf("dead origin: %v after %v", err, time.Since(start))
		}
	})
	t.Run("bad source", func(t *testing.T) {
		for _, src := range []string{"ftp://x/y", "/nonexistent/overlay"} {
			if _, err := Open(ctx, src, HTTPOptions{}); err == nil {
				t.Errorf("%s: no error", src)
			}
		}
	})
}

// TestShapedServerPaces: the shaped server keeps to its rate, on a slow link and on a fast one
// whose bucket holds more than one write.
func TestShapedServerPaces(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		rate    int64
		atLeast time.Duration
	}{
		{"1 MiB at 4 MiB/s", 1 << 20, 4 << 20, 200 * time.Millisecond},
		{"32 MiB at 128 MiB/s", 32 << 20, 128 << 20, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := testData(tc.size)
			s := NewShapedServer(data)
			defer s.Close()
			s.Shape(0, tc.rate)
			o, err := Open(t.Context(), s.URL(), HTTPOptions{})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := o.ReadAt(t.Context(), make([]byte, len(data)), 0); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < tc.atLeast {
				t.Fatalf("took %v, want at least %v", d, tc.atLeast)
			}
		})
	}
}

func TestShapedServerSharesTheLink(t *testing.T) {
	// Files added to a shaped server come through the same link: two 512 KiB reads, one of
	// each file, at 4 MiB/s take a quarter second together, and the byte count covers both.
	a, b := testData(512<<10), bytes.Repeat([]byte{7}, 512<<10)
	s := NewShapedServer(nil)
	defer s.Close()
	s.Shape(0, 4<<20)
	start := time.Now()
	for _, f := range []struct {
		name string
		data []byte
	}{{"a", a}, {"b", b}} {
		o, err := Open(context.Background(), s.Add(f.name, f.data), HTTPOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(f.data))
		if err := o.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, f.data) {
			t.Fatalf("%s: %v", f.name, err)
		}
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("1 MiB over a 4 MiB/s link took %v", d)
	}
	if n := s.Bytes.Load(); n < 1<<20 {
		t.Fatalf("counted %d bytes, want at least 1 MiB", n)
	}
	if _, err := Open(context.Background(), s.Server.URL+"/missing", HTTPOptions{}); err == nil {
		t.Fatal("a file never added was served")
	}
}
