package overlay_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// version is one overlay of an app for a next-version test: its images' changed chunks as
// capture's entries, the order a capture run first touched the stored ones, and their bytes.
type version struct {
	entries []overlay.Entry
	order   []int
	data    map[[2]int64][]byte // by image, chunk
}

func (v *version) add(im uint8, i int64, b []byte) {
	v.data[[2]int64{int64(im), i}] = b
	v.entries = append(v.entries, overlay.Entry{Image: im, Index: i, Kind: overlay.KindBlob, Digest: chunk.Sum(b)})
}

// write writes v as an overlay of shareImages and opens it.
func (v *version) write(t *testing.T, baseID [32]byte) *overlay.Reader {
	t.Helper()
	return writeAndOpen(t, overlay.Meta{BaseID: baseID, Images: shareImages, Codec: overlay.CodecZstd}, v.entries, v.order,
		func(im uint8, i int64) ([]byte, error) { return v.data[[2]int64{int64(im), i}], nil })
}

var shareImages = []overlay.Image{{Name: "disk", Size: 4096 * chunk.Size}, {Name: "memory", Size: 1024 * chunk.Size}}

// nextVersions builds an app (v1: a file of 640 chunks on disk and some guest memory) and
// its next version (v2: the same, one more file of 256 chunks elsewhere on disk, and memory
// that differs from v1's), each with a first-touch order that interleaves every chunk of the
// new file and of the new memory with chunks v1 has, as a capture run touches them.
func nextVersions(seed int64) (v1, v2 *version) {
	rng := rand.New(rand.NewSource(seed))
	random := func() []byte {
		b := make([]byte, chunk.Size)
		rng.Read(b[:chunk.Size/2]) // half random: compressible
		return b
	}
	file := make([][]byte, 640)
	for i := range file {
		file[i] = random()
	}
	v1 = &version{data: map[[2]int64][]byte{}}
	v2 = &version{data: map[[2]int64][]byte{}}
	for i, b := range file {
		v1.add(0, 100+int64(i), b)
		v2.add(0, 100+int64(i), b)
	}
	for i := range 256 {
		v2.add(0, 2000+int64(i), random()) // the new file
	}
	for i := range 200 {
		v1.add(1, int64(i), random()) // memory that two captures never share
		v2.add(1, int64(300+i), random())
	}
	for _, v := range []*version{v1, v2} {
		// First touch: the old file's chunks, each followed by a new chunk while there are any.
		var old, fresh []int
		for e, en := range v.entries {
			if en.Image == 0 && en.Index < 2000 {
				old = append(old, e)
			} else {
				fresh = append(fresh, e)
			}
		}
		for len(old)+len(fresh) > 0 {
			if len(old) > 0 {
				v.order, old = append(v.order, old[0]), old[1:]
			}
			if len(fresh) > 0 {
				v.order, fresh = append(v.order, fresh[0]), fresh[1:]
			}
		}
	}
	return v1, v2
}

// sharedBlobs counts the blobs of r after its working set whose stored chunks are all in
// have, and the blobs after the working set.
func sharedBlobs(r *overlay.Reader, have map[chunk.Digest]bool) (shared, blobs int) {
	ix := r.Index
	missing := make([]bool, len(ix.Blobs))
	for _, c := range ix.Chunks {
		if c.Kind == overlay.KindBlob && !have[c.Digest] {
			missing[c.Blob] = true
		}
	}
	for b := int(ix.WorkingSetBlobs); b < len(ix.Blobs); b++ {
		blobs++
		if !missing[b] {
			shared++
		}
	}
	return shared, blobs
}

// TestNextVersionSharesBlobs: a profiled next version of an app, whose capture touched its
// new chunks interleaved with the chunks of the previous version, keeps the chunks outside
// its working set in place order, so that most of its blobs hold only chunks the previous
// version has: a chunk cache that holds v1 spares them. The working set holds 16 of the old
// file's 640 chunks, and the rest of the old file opens the first blob after it, so its other
// 624 chunks fill 624/n whole blobs of n chunks (9 at 256 KiB, 39 at 64 KiB); in first-touch
// order none would be.
func TestNextVersionSharesBlobs(t *testing.T) {
	var baseID [32]byte
	baseID[0] = 15
	v1, v2 := nextVersions(1)
	var have = map[chunk.Digest]bool{}
	dir := t.TempDir()
	var readers []*overlay.Reader
	for n, v := range []*version{v1, v2} {
		r := v.write(t, baseID)
		// The working set: a few chunks of the old file and of memory, as a profile finds it.
		var ws []overlay.Place
		for _, e := range v.order[:32] {
			ws = append(ws, overlay.Place{Image: shareImages[v.entries[e].Image].Name, Index: v.entries[e].Index})
		}
		path := filepath.Join(dir, []string{"v1.overlay", "v2.overlay"}[n])
		if _, err := overlay.Reorder(context.Background(), r, ws, path, dir); err != nil {
			t.Fatal(err)
		}
		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pr, err := overlay.Open(bytes.NewReader(file), int64(len(file)), overlay.Expect{BaseID: hex.EncodeToString(baseID[:]), Images: shareImages})
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		readers = append(readers, pr)
	}
	for _, c := range readers[0].Index.Chunks {
		if c.Kind == overlay.KindBlob {
			have[c.Digest] = true
		}
	}
	shared, blobs := sharedBlobs(readers[1], have)
	if want := 624 / (overlay.DefaultRestBlobRaw / chunk.Size); shared < want {
		t.Errorf("v2's blobs after the working set made only of v1's chunks: got %d of %d, want at least %d", shared, blobs, want)
	}
}

// TestCanonicalCopy: content at several places is stored at the lowest place (the disk
// image's copy), whichever place the capture touched first and stored; the other places
// refer to it, the content keeps its prefetch position, and the overlay applies.
func TestCanonicalCopy(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	tc := randomBase(rng)
	chunkOf := func(im uint8, i int64) []byte { return tc.want[im][i*chunk.Size : (i+1)*chunk.Size] }
	page, other := make([]byte, chunk.Size), make([]byte, chunk.Size)
	rng.Read(page[:100])
	rng.Read(other[:100])
	// A file's page in the page cache (memory 40 and 7) and on disk (disk 12): the capture
	// touched memory 40 first and stored it there.
	for _, p := range [][2]int64{{1, 40}, {1, 7}, {0, 12}} {
		copy(chunkOf(uint8(p[0]), p[1]), page)
	}
	copy(chunkOf(1, 3), other)
	d, od := chunk.Sum(page), chunk.Sum(other)
	entries := []overlay.Entry{
		{Image: 1, Index: 40, Kind: overlay.KindBlob, Digest: d},
		{Image: 1, Index: 3, Kind: overlay.KindBlob, Digest: od},
		{Image: 1, Index: 7, Kind: overlay.KindSelf, SameImage: 1, SameIndex: 40, Digest: d},
		{Image: 0, Index: 12, Kind: overlay.KindSelf, SameImage: 1, SameIndex: 40, Digest: d},
	}
	var out bytes.Buffer
	_, err := overlay.Write(context.Background(), &out, t.TempDir(), overlay.Meta{BaseID: tc.baseID, Images: images, Codec: overlay.CodecZstd},
		[]byte("device state"), entries, []int{0, 1}, func(im uint8, i int64) ([]byte, error) { return chunkOf(im, i), nil })
	if err != nil {
		t.Fatal(err)
	}
	r, err := overlay.Open(bytes.NewReader(out.Bytes()), int64(out.Len()), tc.expect())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ix := r.Index
	type place struct {
		image uint8
		index int64
	}
	at := map[place]overlay.Chunk{}
	for _, c := range ix.Chunks {
		at[place{c.Image, c.Index}] = c
	}
	disk := at[place{0, 12}]
	if disk.Kind != overlay.KindBlob {
		t.Fatalf("disk chunk 12: got kind %v, want the stored copy", disk.Kind)
	}
	for _, p := range []place{{1, 40}, {1, 7}} {
		c := at[p]
		if c.Kind != overlay.KindSelf || ix.Chunks[c.Self].Image != 0 || ix.Chunks[c.Self].Index != 12 {
			t.Errorf("memory chunk %d: got kind %v referring to entry %d, want a self reference to disk chunk 12", p.index, c.Kind, c.Self)
		}
	}
	var got []place
	for _, e := range ix.Prefetch {
		got = append(got, place{ix.Chunks[e].Image, ix.Chunks[e].Index})
	}
	if want := []place{{0, 12}, {1, 3}}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("prefetch order: got %v, want %v (the content at its first touch)", got, want)
	}
	images, err := tc.apply(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	for i := range images {
		if !bytes.Equal(images[i], tc.want[i]) {
			t.Errorf("%s differs after applying the overlay", ix.Images[i].Name)
		}
	}
}
