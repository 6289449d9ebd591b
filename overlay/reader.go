package overlay

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/klauspost/compress/zstd"

	"github.com/cloudlet/cloudlet/chunk"
)

// Reader reads an overlay through an io.ReaderAt: a local file, or HTTP range requests.
type Reader struct {
	ra        io.ReaderAt
	size      int64
	id        chunk.Digest
	dataStart int64
	prefix    []byte // the first bytes read: header, index, often the device state
	Index     *Index

	// blobs caches decoded blobs. On the demand path, faults on neighbouring chunks land in
	// the same blob; fetching and decoding it again for each (about a millisecond of
	// zstd, far more for xz, plus a round trip) would serialise a VM's first faults. Its cost
	// is the raw size, so it holds about blobCacheBytes of decoded data.
	blobs *ristretto.Cache[uint32, []byte]
	dec   *blobDecoder

	// digests holds each chunk entry's digest once the digest table is in (see LoadDigests);
	// loadMu makes one caller load it while others wait.
	loadMu  sync.Mutex
	digests atomic.Pointer[[]chunk.Digest]
}

// blobCacheBytes bounds the decoded-blob cache.
const blobCacheBytes = 64 << 20

// Prefetcher is an io.ReaderAt that can stream a range ahead of the reads that need it. Open
// tells it, as soon as the header is in, where the index and what a resume needs (the device
// state and the working set) end, so that the reads that follow, Open's own and the fetcher's,
// can be served from one request as its bytes arrive.
type Prefetcher interface {
	Prefetch(Plan)
}

// Plan is what an overlay's header says about the reads ahead of a resume.
type Plan struct {
	ID        string // the overlay's ID, as the header claims it (checked once the index is in)
	First     int64  // bytes read already
	IndexEnd  int64  // where the index ends
	ResumeEnd int64  // where the device state and the working set end
}

// Open reads and checks the header, the index and the chunk digest table: every chunk's
// digest is in the Index. See OpenIndex.
func Open(ra io.ReaderAt, size int64, want Expect) (*Reader, error) {
	r, err := OpenIndex(ra, size, want)
	if err != nil {
		return nil, err
	}
	if err := r.LoadDigests(); err != nil {
		r.Close()
		return nil, err
	}
	ds := *r.digests.Load()
	for e := range r.Index.Chunks {
		r.Index.Chunks[e].Digest = ds[e]
	}
	return r, nil
}

// OpenIndex reads and checks the header and index. It reads FirstRead bytes first; then, if ra
// is a Prefetcher, it asks for everything up to the header's resume end in one go; the rest of
// the index is read in runs of a few MiB as the decompressor needs them. want is the base at
// hand: an overlay for another base is refused as soon as the index head is decoded. size is
// the file's size as its origin claims it; every length in the file is checked against the
// format's limits before anything is allocated for it, since size alone bounds nothing (a
// sparse file, a lying server).
//
// The stored chunks' digests are not loaded: they come after the working set, which a resume
// need not wait for (each blob is checked against its own digest, which the index holds).
// LoadDigests loads them; until then Chunk.Digest of a stored chunk is zero.
func OpenIndex(ra io.ReaderAt, size int64, want Expect) (*Reader, error) {
	first := make([]byte, min(max(size, 0), FirstRead))
	n, err := ra.ReadAt(first, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("overlay: read header: %w", err)
	}
	first = first[:n]
	h, err := decodeHeader(first, size)
	if err != nil {
		return nil, err
	}
	id := hex.EncodeToString(h.indexSHA[:])
	if limit := want.indexRawLimit(); h.indexRaw > limit {
		return nil, corrupt("header", "index of %d bytes, but images %s need at most %d", h.indexRaw, imageList(want.Images), limit)
	}
	end := HeaderSize + h.indexLen
	if p, ok := ra.(Prefetcher); ok && h.resumeEnd > int64(len(first)) {
		p.Prefetch(Plan{ID: id, First: int64(len(first)), IndexEnd: end, ResumeEnd: h.resumeEnd})
	}
	zIndex := io.MultiReader(bytes.NewReader(first[HeaderSize:min(end, int64(len(first)))]),
		runReader(ra, int64(len(first)), max(0, end-int64(len(first)))))
	rawIndex, err := decompressIndex(zIndex, h.indexRaw)
	if err != nil {
		return nil, err
	}
	if got := sum(rawIndex); got != h.indexSHA {
		return nil, corrupt("index", "digest %x, header says %x", got, h.indexSHA)
	}
	ix, err := decodeIndex(rawIndex, func(ix *Index) error { return want.check(ix, id[:12]) })
	if err != nil {
		return nil, err
	}
	r := &Reader{ra: ra, size: size, id: h.indexSHA, dataStart: end, prefix: first, Index: ix}
	if last := r.dataEnd(); last > size {
		return nil, corrupt("file", "data ends at %d, but the file has %d bytes (truncated?)", last, size)
	}
	r.blobs, err = ristretto.NewCache(&ristretto.Config[uint32, []byte]{
		NumCounters: 10 * (blobCacheBytes / DefaultRestBlobRaw), MaxCost: blobCacheBytes, BufferItems: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("overlay: blob cache: %w", err)
	}
	if r.dec, err = newBlobDecoder(); err != nil {
		r.blobs.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	return r, nil
}

// decompressIndex decodes the zstd stream z to exactly raw bytes. The decoder's window is
// capped at raw and the output grows as bytes are decoded, so neither follows the stream's
// own claims.
func decompressIndex(z io.Reader, raw int64) ([]byte, error) {
	dec, err := zstd.NewReader(z, zstd.WithDecoderMaxMemory(uint64(raw)+1<<16), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	out, err := readExactly(dec, raw)
	if err != nil {
		return nil, corrupt("index", "decompress to the %d bytes the header says: %w", raw, err)
	}
	return out, nil
}

// Close releases the blob cache and the decoder.
func (r *Reader) Close() {
	r.blobs.Close()
	r.dec.close()
}

// ID is the overlay's identity: the hex SHA-256 of its index.
func (r *Reader) ID() string { return hex.EncodeToString(r.id[:]) }

// BaseID is the hex ID of the base the overlay applies to.
func (r *Reader) BaseID() string { return hex.EncodeToString(r.Index.BaseID[:]) }

// Size is the overlay file's size.
func (r *Reader) Size() int64 { return r.size }

func (r *Reader) dataEnd() int64 {
	ix := r.Index
	end := max(ix.Devstate.Offset+ix.Devstate.Length, ix.Digests.Offset+ix.Digests.Length)
	if n := len(ix.Blobs); n > 0 {
		end = max(end, ix.Blobs[n-1].Offset+ix.Blobs[n-1].Length)
	}
	return r.dataStart + end
}

// LoadDigests reads and checks the chunk digest table, once: from what Open read first if it
// holds it, else from the file (through a Prefetcher, as its stream brings it).
func (r *Reader) LoadDigests() error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	if r.digests.Load() != nil {
		return nil
	}
	b, err := r.readAt(r.DigestTableRange())
	if err != nil {
		return fmt.Errorf("overlay: read the digest table: %w", err)
	}
	return r.setDigests(b)
}

// SetDigestTable loads the chunk digest table from b, a copy kept elsewhere (a chunk store),
// if it is the one the index pins.
func (r *Reader) SetDigestTable(b []byte) error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	if r.digests.Load() != nil {
		return nil
	}
	return r.setDigests(b)
}

func (r *Reader) setDigests(table []byte) error {
	ix := r.Index
	if int64(len(table)) != ix.Digests.Length || sum(table) != ix.Digests.Digest {
		return corrupt("digest table", "%d bytes that do not match the index's digest", len(table))
	}
	ds := make([]chunk.Digest, len(ix.Chunks))
	for e, c := range ix.Chunks {
		switch c.Kind {
		case KindBase:
			ds[e] = c.Digest
		case KindBlob:
			table = table[copy(ds[e][:], table):]
		}
	}
	for e, c := range ix.Chunks {
		if c.Kind == KindSelf {
			ds[e] = ds[c.Self]
		}
	}
	r.digests.Store(&ds)
	return nil
}

// ChunkDigest returns the digest the overlay pins for chunk entry e, and false for a zero
// chunk or while the digest table is not loaded.
func (r *Reader) ChunkDigest(e int) (chunk.Digest, bool) {
	ds := r.digests.Load()
	if ds == nil || r.Index.Chunks[e].Kind == KindZero {
		return chunk.Digest{}, false
	}
	return (*ds)[e], true
}

// DigestsLoaded says whether the chunk digest table is in.
func (r *Reader) DigestsLoaded() bool { return r.digests.Load() != nil }

// DigestTable returns the loaded chunk digest table as the file holds it, or nil.
func (r *Reader) DigestTable() []byte {
	ds := r.digests.Load()
	if ds == nil {
		return nil
	}
	b := make([]byte, 0, r.Index.Digests.Length)
	for e, c := range r.Index.Chunks {
		if c.Kind == KindBlob {
			b = append(b, (*ds)[e][:]...)
		}
	}
	return b
}

// Prefix returns the bytes at [off, off+n) if Open's first read already holds them: the first
// blobs (the working set) often arrive with the index.
func (r *Reader) Prefix(off, n int64) ([]byte, bool) {
	if off+n > int64(len(r.prefix)) {
		return nil, false
	}
	return r.prefix[off : off+n], true
}

// PrefixHead returns what of [off, off+n) Open's first read holds: its start, all of it, or
// nothing. A reader that streams from the end of that read (a Prefetcher) is then asked only
// for the rest, which it has.
func (r *Reader) PrefixHead(off, n int64) []byte {
	head := min(int64(len(r.prefix))-off, n)
	if head <= 0 {
		return nil
	}
	return r.prefix[off : off+head]
}

// DevstateEnd is where the device state ends: the file up to there is everything but blobs.
func (r *Reader) DevstateEnd() int64 {
	return r.dataStart + r.Index.Devstate.Offset + r.Index.Devstate.Length
}

// PrefixLen is how many bytes Open read first.
func (r *Reader) PrefixLen() int64 { return int64(len(r.prefix)) }

// BlobRange is where blob i lies in the file.
func (r *Reader) BlobRange(i int) (off, n int64) {
	b := r.Index.Blobs[i]
	return r.dataStart + b.Offset, b.Length
}

// DigestTableRange is where the chunk digest table lies in the file.
func (r *Reader) DigestTableRange() (off, n int64) {
	return r.dataStart + r.Index.Digests.Offset, r.Index.Digests.Length
}

// CheckBase fails unless the overlay was made on the base with this ID.
func (r *Reader) CheckBase(id string) error {
	if r.BaseID() != id {
		return fmt.Errorf("overlay %s is for base %s, not %s", r.ID()[:12], r.BaseID(), id)
	}
	return nil
}

// Devstate returns the verified device state.
func (r *Reader) Devstate() ([]byte, error) {
	return r.readBlob("device state", r.Index.Devstate)
}

// Blob returns blob i decoded and verified.
func (r *Reader) Blob(i uint32) ([]byte, error) {
	if v, ok := r.blobs.Get(i); ok {
		return v, nil
	}
	if int(i) >= len(r.Index.Blobs) {
		return nil, fmt.Errorf("overlay: no blob %d", i)
	}
	raw, err := r.readBlob(fmt.Sprintf("blob %d", i), r.Index.Blobs[i])
	if err != nil {
		return nil, err
	}
	r.blobs.Set(i, raw, int64(len(raw)))
	return raw, nil
}

// DecodeBlob checks and decodes blob i from its compressed bytes, fetched by the caller (for
// instance as part of one larger range request).
func (r *Reader) DecodeBlob(i uint32, z []byte) ([]byte, error) {
	b := r.Index.Blobs[i]
	// Not cached: its caller (the fetcher) delivers the chunks and has no use for the blob
	// again, and 64 MiB of decoded blobs was most of a synthesis's memory.
	return r.decode(fmt.Sprintf("blob %d", i), b, z)
}

func (r *Reader) readBlob(what string, b Blob) ([]byte, error) {
	z, err := r.readAt(r.dataStart+b.Offset, b.Length)
	if err != nil {
		return nil, fmt.Errorf("overlay: read %s: %w", what, err)
	}
	return r.decode(what, b, z)
}

// readAt reads n bytes at off: those that came with Open's first read from it, the rest from
// the file in runs (so that a prefetching ReaderAt, which streams from the end of the first
// read, serves them).
func (r *Reader) readAt(off, n int64) ([]byte, error) {
	head := r.PrefixHead(off, n)
	if int64(len(head)) == n {
		return head, nil
	}
	rest, err := readAtRuns(r.ra, off+int64(len(head)), n-int64(len(head)))
	if err != nil || len(head) == 0 {
		return rest, err
	}
	return append(bytes.Clone(head), rest...), nil
}

func (r *Reader) decode(what string, b Blob, z []byte) ([]byte, error) {
	if got := sum(z); got != b.Digest {
		return nil, corrupt(what, "digest %x, index says %x", got[:8], b.Digest[:8])
	}
	raw, err := r.dec.decode(r.Index.Codec, z, b.Raw)
	if err != nil {
		return nil, corrupt(what, "%w", err)
	}
	return raw, nil
}

// ChunkData returns the verified bytes of a stored (blob or self) chunk entry.
func (r *Reader) ChunkData(entry int) ([]byte, error) {
	c := r.Index.Chunks[entry]
	if c.Kind == KindSelf {
		c = r.Index.Chunks[c.Self]
	}
	if c.Kind != KindBlob {
		return nil, fmt.Errorf("overlay: chunk entry %d is %v, not stored", entry, c.Kind)
	}
	raw, err := r.Blob(c.Blob)
	if err != nil {
		return nil, err
	}
	off, n := r.InBlob(entry)
	data := raw[off : off+n]
	// The blob passed its digest; the chunk's, once the table is in, checks the table too.
	if d, ok := r.ChunkDigest(entry); ok && sum(data) != d {
		return nil, corrupt(r.chunkName(entry), "digest mismatch")
	}
	return data, nil
}

// InBlob is where the bytes of stored chunk entry e (or of the chunk a self reference copies)
// lie in its blob's decoded data: offset and length, which the index has checked against the
// blob's size.
func (r *Reader) InBlob(e int) (off, n int64) {
	c := r.Index.Chunks[e]
	if c.Kind == KindSelf {
		c = r.Index.Chunks[c.Self]
	}
	return c.Offset, r.Index.chunkLen(c.Image, c.Index)
}

func (r *Reader) chunkName(entry int) string {
	c := r.Index.Chunks[entry]
	return fmt.Sprintf("chunk %d of %s (entry %d)", c.Index, r.Index.Images[c.Image].Name, entry)
}

// MaxBaseRun is the most base references BaseRun reads at once: 512 KiB of 4 KiB chunks, a
// read large enough that its cost is the bytes, and a bound on its buffer whatever the index
// says.
const MaxBaseRun = 128

// BaseRefRun is how many base references from entry e on lie side by side both in their image
// and in the base, at most MaxBaseRun, so BaseRun reads them at once (0 if entry e is not a
// base reference).
func (r *Reader) BaseRefRun(e int) int {
	cs := r.Index.Chunks
	n := 0
	for e+n < len(cs) && cs[e+n].Kind == KindBase && n < MaxBaseRun {
		if n > 0 {
			a, b := cs[e+n-1], cs[e+n]
			if b.Image != a.Image || b.Index != a.Index+1 || b.BaseImage != a.BaseImage || b.BaseIndex != a.BaseIndex+1 {
				break
			}
		}
		n++
	}
	return n
}

// BaseRun reads the n base references from entry e on, which BaseRefRun says lie side by
// side, with one read of the base, and checks each against its digest.
func (r *Reader) BaseRun(base []io.ReaderAt, e, n int) ([]byte, error) {
	if n < 1 || r.BaseRefRun(e) < n {
		return nil, fmt.Errorf("overlay: %s: not the start of %d base references side by side", r.chunkName(e), n)
	}
	return r.baseRun(base, e, n)
}

// baseRun reads the base chunks behind n base references from entry e on, side by side, and
// checks each against its digest: a base on this cloudlet that differs from the one the
// overlay was made on is caught here.
func (r *Reader) baseRun(base []io.ReaderAt, e, n int) ([]byte, error) {
	ix := r.Index
	first, last := ix.Chunks[e], ix.Chunks[e+n-1]
	size := ix.chunkBytes()
	buf := make([]byte, (last.BaseIndex-first.BaseIndex)*size+ix.chunkLen(last.BaseImage, last.BaseIndex))
	if _, err := base[first.BaseImage].ReadAt(buf, first.BaseIndex*size); err != nil {
		return nil, fmt.Errorf("overlay: %s: read base chunks %d-%d of %s: %w", r.chunkName(e), first.BaseIndex, last.BaseIndex, ix.Images[first.BaseImage].Name, err)
	}
	for i := range n {
		c := ix.Chunks[e+i]
		lo := int64(i) * size
		if sum(buf[lo:min(lo+size, int64(len(buf)))]) != c.Digest {
			return nil, fmt.Errorf("overlay: %s: base chunk %d of %s has another digest: the base differs from the overlay's", r.chunkName(e+i), c.BaseIndex, ix.Images[c.BaseImage].Name)
		}
	}
	return buf, nil
}

// Resolve returns the bytes of chunk entry e: zeros, a verified base chunk, or stored data.
func (r *Reader) Resolve(base []io.ReaderAt, e int) ([]byte, error) {
	c := r.Index.Chunks[e]
	switch c.Kind {
	case KindZero:
		return make([]byte, r.Index.chunkLen(c.Image, c.Index)), nil
	case KindBase:
		return r.baseRun(base, e, 1)
	}
	return r.ChunkData(e)
}

// Apply writes every changed chunk into out (one writer per image, in index order), reading
// base references from base. out must already hold the base images: chunks the overlay does
// not list are the base's. Stored chunks are visited blob by blob.
func (r *Reader) Apply(ctx context.Context, base []io.ReaderAt, out []io.WriterAt) error {
	if len(base) != len(r.Index.Images) || len(out) != len(r.Index.Images) {
		return fmt.Errorf("overlay: apply needs %d base and output images", len(r.Index.Images))
	}
	for e, c := range r.Index.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := r.Resolve(base, e)
		if err != nil {
			return err
		}
		if _, err := out[c.Image].WriteAt(data, c.Index*int64(r.Index.ChunkSize)); err != nil {
			return fmt.Errorf("overlay: write %s: %w", r.chunkName(e), err)
		}
	}
	return nil
}

// Verify checks every digest in the overlay: device state, each blob, each stored chunk, and
// (with base) each base reference. It reports the first bad one by number.
func (r *Reader) Verify(ctx context.Context, base []io.ReaderAt) error {
	if _, err := r.Devstate(); err != nil {
		return err
	}
	for i := range r.Index.Blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := r.Blob(uint32(i)); err != nil {
			return err
		}
	}
	for e, c := range r.Index.Chunks {
		if c.Kind == KindZero || c.Kind == KindBase && base == nil {
			continue
		}
		if _, err := r.Resolve(base, e); err != nil {
			return err
		}
	}
	return nil
}

// Counts returns the number of chunk entries of each kind.
func (ix *Index) Counts() map[Kind]int {
	n := map[Kind]int{}
	for _, c := range ix.Chunks {
		n[c.Kind]++
	}
	return n
}

// resumeDataEnd is where, after the index, the stream a resume starts with ends: the device
// state, the working-set blobs and the digest table after them.
func (ix *Index) resumeDataEnd() int64 {
	return ix.Digests.Offset + ix.Digests.Length
}

// WorkingSetBytes is the compressed size of the working-set blobs.
func (ix *Index) WorkingSetBytes() int64 {
	var n int64
	for _, b := range ix.Blobs[:ix.WorkingSetBlobs] {
		n += b.Length
	}
	return n
}
