package overlay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// testCase is a base, a customised version of it, and the overlay between them, built the
// way capture builds one: zero, base-reference, self-reference and stored chunks.
type testCase struct {
	base, want [][]byte // per image
	file       []byte
	baseID     [32]byte
}

var images = []overlay.Image{{Name: "disk", Size: 200*chunk.Size + 512}, {Name: "memory", Size: 256 * chunk.Size}}

// randomBase is a test case with random base images and no change yet: want equals base.
func randomBase(rng *rand.Rand) *testCase {
	tc := &testCase{}
	rng.Read(tc.baseID[:])
	for _, im := range images {
		b := make([]byte, im.Size)
		rng.Read(b)
		tc.base = append(tc.base, b)
		tc.want = append(tc.want, append([]byte(nil), b...))
	}
	return tc
}

func newCase(t testing.TB, codec overlay.Codec, seed int64) *testCase {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	tc := randomBase(rng)
	chunkOf := func(img []byte, i int64) []byte {
		return img[i*chunk.Size : min((i+1)*chunk.Size, int64(len(img)))]
	}
	var entries []overlay.Entry
	var order []int
	stored := map[chunk.Digest][2]int64{}
	for im := range images {
		n := chunk.Count(images[im].Size)
		for i := int64(0); i < n; i++ {
			if rng.Intn(3) != 0 {
				continue // unchanged
			}
			dst := chunkOf(tc.want[im], i)
			e := overlay.Entry{Image: uint8(im), Index: i}
			switch rng.Intn(4) {
			case 0:
				clear(dst)
				e.Kind = overlay.KindZero
			case 1: // equal to a base chunk elsewhere (same length: not the short tail)
				if i == n-1 && im == 0 {
					continue
				}
				j := rng.Int63n(chunk.Count(images[1].Size))
				copy(dst, chunkOf(tc.base[1], j))
				e.Kind, e.BaseImage, e.BaseIndex = overlay.KindBase, 1, j
			default:
				if len(stored) > 0 && rng.Intn(4) == 0 && int64(len(dst)) == chunk.Size {
					for _, p := range stored { // a copy of a stored chunk
						copy(dst, chunkOf(tc.want[p[0]], p[1]))
						e.Kind, e.SameImage, e.SameIndex = overlay.KindSelf, uint8(p[0]), p[1]
						break
					}
				} else {
					rng.Read(dst[:len(dst)/2]) // half random: compressible
					clear(dst[len(dst)/2:])
					e.Kind = overlay.KindBlob
					stored[chunk.Sum(dst)] = [2]int64{int64(im), i}
				}
			}
			e.Digest = chunk.Sum(dst)
			if e.Kind == overlay.KindBlob && rng.Intn(2) == 0 {
				order = append(order, len(entries))
			}
			entries = append(entries, e)
		}
	}
	// Self references must point at chunks whose bytes did not change since: rebuild digests.
	for k, e := range entries {
		if e.Kind == overlay.KindSelf {
			entries[k].Digest = chunk.Sum(chunkOf(tc.want[e.SameImage], e.SameIndex))
			copy(chunkOf(tc.want[e.Image], e.Index), chunkOf(tc.want[e.SameImage], e.SameIndex))
		}
	}
	var out bytes.Buffer
	_, err := overlay.Write(context.Background(), &out, t.TempDir(), overlay.Meta{
		BaseID: tc.baseID, Images: images, Config: []byte(`{"machine":"q35"}`), Codec: codec,
		BlobRaw: 64 * chunk.Size, WorkingSet: len(order),
	}, []byte("device state bytes"), entries, order, func(im uint8, i int64) ([]byte, error) {
		return chunkOf(tc.want[im], i), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tc.file = out.Bytes()
	return tc
}

func (tc *testCase) expect() overlay.Expect {
	return overlay.Expect{BaseID: hex.EncodeToString(tc.baseID[:]), Images: images}
}

func (tc *testCase) apply(file []byte) ([][]byte, error) {
	r, err := overlay.Open(bytes.NewReader(file), int64(len(file)), tc.expect())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var base []io.ReaderAt
	var out []io.WriterAt
	var got [][]byte
	for i := range images {
		base = append(base, bytes.NewReader(tc.base[i]))
		g := &memFile{b: append([]byte(nil), tc.base[i]...)}
		got = append(got, nil)
		out = append(out, g)
		defer func() { got[i] = g.b }()
	}
	if err := r.Verify(context.Background(), base); err != nil {
		return nil, err
	}
	if err := r.Apply(context.Background(), base, out); err != nil {
		return nil, err
	}
	for i := range out {
		got[i] = out[i].(*memFile).b
	}
	return got, nil
}

type memFile struct{ b []byte }

func (m *memFile) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }

func TestRoundTrip(t *testing.T) {
	for _, codec := range []overlay.Codec{overlay.CodecZstd, overlay.CodecXZ} {
		t.Run(codec.String(), func(t *testing.T) {
			tc := newCase(t, codec, 1)
			got, err := tc.apply(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			for i := range images {
				if !bytes.Equal(got[i], tc.want[i]) {
					t.Fatalf("%s differs after apply", images[i].Name)
				}
			}
			r, _ := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), overlay.Expect{})
			defer r.Close()
			counts := r.Index.Counts()
			for _, k := range []overlay.Kind{overlay.KindZero, overlay.KindBase, overlay.KindSelf, overlay.KindBlob} {
				if counts[k] == 0 {
					t.Errorf("no %v chunks in the test overlay", k)
				}
			}
			if r.Index.WorkingSetBlobs == 0 || len(r.Index.Blobs) < 2 {
				t.Errorf("working set of %d blobs of %d", r.Index.WorkingSetBlobs, len(r.Index.Blobs))
			}
			if dev, err := r.Devstate(); err != nil || string(dev) != "device state bytes" {
				t.Errorf("devstate %q, %v", dev, err)
			}
		})
	}
}

// TestCorruption: every kind of damage is a clear error naming the part, never a panic and
// never wrong bytes.
func TestCorruption(t *testing.T) {
	tc := newCase(t, overlay.CodecZstd, 2)
	r, err := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	blobOff, _ := r.BlobRange(1)
	ws, _ := r.BlobRange(int(r.Index.WorkingSetBlobs) - 1)
	tableOff := ws + r.Index.Blobs[r.Index.WorkingSetBlobs-1].Length
	r.Close()
	flip := func(off int64) []byte {
		b := append([]byte(nil), tc.file...)
		b[off] ^= 0x40
		return b
	}
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"flipped byte in a blob", flip(blobOff + 10), "blob 1: digest"},
		{"flipped byte in the digest table", flip(tableOff + 5), "digest table"},
		{"flipped byte in the index", flip(overlay.HeaderSize + 20), "index"},
		{"flipped byte in the header", flip(15), "header: checksum"},
		{"not an overlay", []byte("SSH-2.0-" + strings.Repeat("x", 200)), "not an overlay"},
		{"unknown version", withVersion(tc.file, 9), "format version 9"},
		{"version 1", withVersion(tc.file, 1), "format version 1; this cloudlet reads version 3"},
		{"version 2", withVersion(tc.file, 2), "format version 2; this cloudlet reads version 3"},
		{"resume end past the file", withResumeEnd(tc.file, int64(len(tc.file))+1), "resume end"},
		{"resume end inside the index", withResumeEnd(tc.file, overlay.HeaderSize), "resume end"},
		{"empty", nil, "header"},
	}
	rng := rand.New(rand.NewSource(3))
	for range 10 {
		cut := rng.Int63n(int64(len(tc.file)))
		cases = append(cases, struct {
			name string
			file []byte
			want string
		}{"truncated", tc.file[:cut], ""})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := tc.apply(c.file)
			if err == nil {
				t.Fatal("a damaged overlay applied without error")
			}
			var ce *overlay.CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a CorruptError", err, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			// Errors reach strangers (a session's error): they quote no bytes of the file.
			if strings.Contains(err.Error(), "SSH") || strings.Contains(err.Error(), "xxx") {
				t.Fatalf("error %q quotes the file", err)
			}
		})
	}
}

// TestWrongBase: a base with other bytes than the overlay's is caught at the first base
// reference, and CheckBase names both IDs.
func TestWrongBase(t *testing.T) {
	tc := newCase(t, overlay.CodecZstd, 4)
	other := newCase(t, overlay.CodecZstd, 5)
	tc.base = other.base
	if _, err := tc.apply(tc.file); err == nil || !strings.Contains(err.Error(), "the base differs") {
		t.Fatalf("apply on the wrong base: %v", err)
	}
	r, _ := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), overlay.Expect{})
	defer r.Close()
	if err := r.CheckBase(strings.Repeat("ab", 32)); err == nil || !strings.Contains(err.Error(), "is for base") {
		t.Fatalf("CheckBase: %v", err)
	}
	// Open refuses an overlay for another base, or for other images, from the index head.
	otherImages := append([]overlay.Image(nil), images...)
	otherImages[1].Size += chunk.Size
	for _, want := range []overlay.Expect{
		{BaseID: hex.EncodeToString(other.baseID[:]), Images: images},
		{BaseID: tc.expect().BaseID, Images: otherImages},
		{BaseID: tc.expect().BaseID, Images: images[:1]},
	} {
		if _, err := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), want); !errors.Is(err, overlay.ErrOtherBase) {
			t.Errorf("Open expecting %+v: %v, want ErrOtherBase", want, err)
		}
	}
}

func withVersion(file []byte, v uint16) []byte {
	b := append([]byte(nil), file...)
	b[8], b[9] = byte(v), byte(v>>8)
	overlay.FixHeaderChecksum(b)
	return b
}

func withResumeEnd(file []byte, end int64) []byte {
	b := append([]byte(nil), file...)
	binary.LittleEndian.PutUint64(b[60:], uint64(end))
	overlay.FixHeaderChecksum(b)
	return b
}

// prefetchRecorder is a ReaderAt that notes the plans Open gives it.
type prefetchRecorder struct {
	*bytes.Reader
	plans []overlay.Plan
}

func (p *prefetchRecorder) Prefetch(plan overlay.Plan) { p.plans = append(p.plans, plan) }

// TestResumeEnd: a reader that can prefetch is told, right after the header, where the index
// and what a resume streams first end: the device state, the working-set blobs and the digest
// table after them, and nothing more.
func TestResumeEnd(t *testing.T) {
	tc := newCase(t, overlay.CodecZstd, 6)
	ra := &prefetchRecorder{Reader: bytes.NewReader(tc.file)}
	r, err := overlay.Open(ra, int64(len(tc.file)), tc.expect())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ws := int(r.Index.WorkingSetBlobs)
	if ws == 0 || ws == len(r.Index.Blobs) {
		t.Fatalf("the test case has %d working-set blobs of %d: want some, not all", ws, len(r.Index.Blobs))
	}
	off, n := r.BlobRange(ws - 1)
	want := overlay.Plan{ID: r.ID(), First: overlay.FirstRead, ResumeEnd: off + n + r.Index.Digests.Length}
	if len(ra.plans) != 1 {
		t.Fatalf("%d prefetch plans, want 1", len(ra.plans))
	}
	got := ra.plans[0]
	if got.ID != want.ID || got.First != want.First || got.ResumeEnd != want.ResumeEnd || got.IndexEnd <= overlay.HeaderSize || got.IndexEnd >= got.ResumeEnd {
		t.Fatalf("plan %+v, want %+v with the index end between the header and the resume end", got, want)
	}
}

// limitedReader serves the file's first n bytes and fails beyond them, counting reads there.
type limitedReader struct {
	b      []byte
	n      int64
	beyond int
}

func (l *limitedReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > l.n {
		l.beyond++
		return 0, errors.New("not arrived yet")
	}
	return copy(p, l.b[off:]), nil
}

// TestOpenIndexBeforeDigests: OpenIndex reads nothing past the working set, whose blobs then
// decode and verify on their own digests; the chunk digests come once the table is loaded.
func TestOpenIndexBeforeDigests(t *testing.T) {
	tc := newCase(t, overlay.CodecZstd, 4)
	full, err := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	ws := int(full.Index.WorkingSetBlobs)
	off, n := full.BlobRange(ws - 1)
	lr := &limitedReader{b: tc.file, n: off + n}
	r, err := overlay.OpenIndex(lr, int64(len(tc.file)), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Devstate(); err != nil {
		t.Fatal(err)
	}
	stored := 0
	for e, c := range r.Index.Chunks {
		if c.Kind != overlay.KindBlob || int(c.Blob) >= ws {
			continue
		}
		if _, ok := r.ChunkDigest(e); ok {
			t.Fatalf("chunk entry %d has a digest before the table was loaded", e)
		}
		data, err := r.ChunkData(e)
		if err != nil {
			t.Fatalf("working-set chunk entry %d: %v", e, err)
		}
		if want := full.Index.Chunks[e].Digest; chunk.Sum(data) != want {
			t.Fatalf("working-set chunk entry %d has other bytes than the full reader's", e)
		}
		stored++
	}
	if stored == 0 || lr.beyond != 0 {
		t.Fatalf("%d working-set chunks read, %d reads past the working set: want some and none", stored, lr.beyond)
	}
	if err := r.LoadDigests(); err == nil || !strings.Contains(err.Error(), "digest table") {
		t.Fatalf("LoadDigests with the table not there: %v, want an error naming the digest table", err)
	}
	lr.n = int64(len(tc.file))
	if err := r.LoadDigests(); err != nil {
		t.Fatal(err)
	}
	for e, c := range full.Index.Chunks {
		got, ok := r.ChunkDigest(e)
		if ok != (c.Kind != overlay.KindZero) || ok && got != c.Digest {
			t.Fatalf("chunk entry %d: digest %x (%v), want %x", e, got[:4], ok, c.Digest[:4])
		}
	}
	if !bytes.Equal(r.DigestTable(), full.DigestTable()) || len(r.DigestTable()) == 0 {
		t.Fatal("the loaded digest table differs from the full reader's")
	}
}

// TestBaseRun: base references side by side in their image and in the base are read as one
// run, and each chunk of it is still checked against its own digest.
func TestBaseRun(t *testing.T) {
	tc := randomBase(rand.New(rand.NewSource(9)))
	baseChunks := func(i, n int64) []byte { return tc.base[1][i*chunk.Size : (i+n)*chunk.Size] }
	// disk chunk -> memory base chunk: runs of 4, 2 and 1 (17 is not next to 15), then one
	// longer than a read may be.
	refs := [][2]int64{{10, 20}, {11, 21}, {12, 22}, {13, 23}, {14, 30}, {15, 31}, {17, 32}}
	for i := range int64(overlay.MaxBaseRun + 22) {
		refs = append(refs, [2]int64{20 + i, 40 + i})
	}
	var entries []overlay.Entry
	for _, r := range refs {
		entries = append(entries, overlay.Entry{Image: 0, Index: r[0], Kind: overlay.KindBase,
			BaseImage: 1, BaseIndex: r[1], Digest: chunk.Sum(baseChunks(r[1], 1))})
	}
	r := writeAndOpen(t, overlay.Meta{BaseID: tc.baseID, Images: images, Codec: overlay.CodecZstd}, entries, nil,
		func(uint8, int64) ([]byte, error) { return nil, errors.New("no stored chunks") })
	var runs []int
	for e := 0; e < len(r.Index.Chunks); e += runs[len(runs)-1] {
		runs = append(runs, r.BaseRefRun(e))
	}
	if want := []int{4, 2, 1, overlay.MaxBaseRun, 22}; !slices.Equal(runs, want) {
		t.Fatalf("runs %v, want %v", runs, want)
	}
	base := []io.ReaderAt{bytes.NewReader(tc.base[0]), bytes.NewReader(tc.base[1])}
	got, err := r.BaseRun(base, 0, 4)
	if err != nil || !bytes.Equal(got, baseChunks(20, 4)) {
		t.Fatalf("run of 4: %d bytes, %v", len(got), err)
	}
	if _, err := r.BaseRun(base, 4, 3); err == nil || !strings.Contains(err.Error(), "not the start of 3 base references") {
		t.Errorf("a run of 3 where 2 lie side by side: %v", err)
	}
	tc.base[1][22*chunk.Size] ^= 1
	if _, err := r.BaseRun(base, 0, 4); err == nil || !strings.Contains(err.Error(), "base chunk 22 of memory has another digest") {
		t.Errorf("a run over a changed base chunk: %v", err)
	}
}

// writeAndOpen writes an overlay of entries (stored chunks read by read) in prefetch order,
// and opens it expecting m's base and images; the reader closes with the test.
func writeAndOpen(t *testing.T, m overlay.Meta, entries []overlay.Entry, order []int, read overlay.ReadChunk) *overlay.Reader {
	t.Helper()
	var out bytes.Buffer
	if _, err := overlay.Write(t.Context(), &out, t.TempDir(), m, []byte("device state"), entries, order, read); err != nil {
		t.Fatal(err)
	}
	r, err := overlay.Open(bytes.NewReader(out.Bytes()), int64(out.Len()), overlay.Expect{BaseID: hex.EncodeToString(m.BaseID[:]), Images: m.Images})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
