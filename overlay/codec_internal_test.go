package overlay

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestBlobDecoder: a blob as the writer makes it decodes in one call; a frame that declares
// other than the blob's raw size, or decodes to more, does not get past its checks.
func TestBlobDecoder(t *testing.T) {
	d, err := newBlobDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	raw := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range raw {
		raw[i] = byte(rng.IntN(16)) // compressible, like most chunks
	}
	z, err := compress(CodecZstd, raw)
	if err != nil {
		t.Fatal(err)
	}
	if !d.oneCall(z, int64(len(raw))) {
		t.Fatal("a blob as the writer makes it does not take the one-call path")
	}
	got, err := d.decode(CodecZstd, z, int64(len(raw)))
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("decode: %d bytes, %v; want the %d raw bytes", len(got), err, len(raw))
	}

	tests := []struct {
		name    string
		z       []byte
		raw     int64
		oneCall bool
		want    string
	}{
		{"a second frame after the declared one", append(bytes.Clone(z), z...), int64(len(raw)), true, "exceeds"},
		{"declares fewer bytes than the index", z, int64(len(raw)) + 1, false, "bytes"},
		{"declares more bytes than the index", z, int64(len(raw)) - 1, false, "more bytes than declared"},
		{"no content size, a 2 GiB window", zstdWindowBomb(), 5, false, "window"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := d.oneCall(tc.z, tc.raw); got != tc.oneCall {
				t.Errorf("one call: %v, want %v", got, tc.oneCall)
			}
			var out []byte
			n := allocated(func() { out, err = d.decode(CodecZstd, tc.z, tc.raw) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decode: %d bytes, %v; want an error mentioning %q", len(out), err, tc.want)
			}
			if n > 4<<20 {
				t.Errorf("decode allocated %d MiB for a %d-byte blob", n>>20, len(tc.z))
			}
		})
	}
}

// BenchmarkBlobDecode compares, side by side, a streaming decoder set up for each blob (the
// path every frame the one-call path refuses takes) with the one-call path, on 64 KiB blobs
// of compressible and of incompressible bytes.
func BenchmarkBlobDecode(b *testing.B) {
	d, err := newBlobDecoder()
	if err != nil {
		b.Fatal(err)
	}
	defer d.close()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, kind := range []string{"compressible", "random"} {
		raw := make([]byte, 64<<10)
		for i := range raw {
			if kind == "random" {
				raw[i] = byte(rng.Uint32())
			} else {
				raw[i] = byte(rng.IntN(16))
			}
		}
		z, err := compress(CodecZstd, raw)
		if err != nil {
			b.Fatal(err)
		}
		paths := map[string]func() ([]byte, error){
			"stream":   func() ([]byte, error) { return decompress(CodecZstd, z, int64(len(raw))) },
			"one-call": func() ([]byte, error) { return d.decode(CodecZstd, z, int64(len(raw))) },
		}
		for _, path := range []string{"stream", "one-call"} {
			b.Run(kind+"/"+path, func(b *testing.B) {
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := paths[path](); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
