package synthesis

import (
	"context"
	"log"
	"sync/atomic"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// ChunkStore is a cache of verified chunks shared by the syntheses of this cloudlet (a
// chunkstore.Store): the fetcher takes from it every blob whose chunks it all has, instead of
// fetching the blob, and puts into it every chunk it fetched and verified.
type ChunkStore interface {
	// Get reads the chunk with digest d into p and returns its length, or false if it lacks
	// the chunk. The fetcher checks the bytes against the index's digest again: the store is
	// a disk that other processes write.
	Get(d chunk.Digest, p []byte) (n int, ok bool)
	// Put stores a verified chunk, best effort (it may drop it); it must copy data.
	Put(d chunk.Digest, data []byte)
	// Tag notes, once the chunks put so far are stored, that the store holds every chunk of
	// the overlay with this ID, all put or read since the time since, and keeps data with the
	// note; Tagged says whether it does (a hint: a chunk may be gone since), TagData returns
	// the data.
	Tag(id string, since time.Time, data []byte)
	Tagged(id string) bool
	TagData(id string) ([]byte, bool)
}

// storeState is the fetcher's pass over the chunk store. At Start, the pass goes through the
// waiting blobs in prefetch order and delivers each one whose chunks the store has all of.
// While it runs no background range request starts (it would fetch what the store has); demand
// misses still go to the origin, unless their blob is still to be looked up in the store, which
// the pass then does first.
//
// The store is asked by chunk digest, so the pass waits for the digest table. When the table
// is not in at Start, it follows the working set in the stream: the pass then leaves the
// working set to the stream (its bytes come anyway), and demands go to the origin until the
// table is in.
type storeState struct {
	since   time.Time // fixed at Start: when the pass began
	from    int       // fixed at Start: the first blob the pass looks up
	running bool      // guarded by Fetcher.mu: the pass is going on
	queue   []int     // guarded by Fetcher.mu: demanded blobs for the pass to look up first
	// demanded, guarded by Fetcher.mu: blobs the pass will look up or holds now that a demand
	// waits for; if the store lacks one, it is fetched before anything else.
	demanded map[int]bool
	missed   []bool       // guarded by Fetcher.mu: blobs the pass looked up and left to the origin
	bytes    atomic.Int64 // chunk bytes delivered from the store
	ns       atomic.Int64 // time spent reading the store and delivering from it
	misses   atomic.Int64 // blobs the pass looked up and had to leave to the origin
}

// startStore starts the store pass, if there is a store. It runs before the workers start.
func (f *Fetcher) startStore(ctx context.Context) {
	if f.opts.Store == nil {
		return
	}
	f.mu.Lock()
	f.st.since, f.st.running, f.st.demanded = time.Now(), true, map[int]bool{}
	if !f.r.DigestsLoaded() {
		f.st.from = int(f.r.Index.WorkingSetBlobs)
	}
	f.st.missed = make([]bool, len(f.state))
	// Blobs a kept cache had already are neither read from the store nor put into it: then the
	// store may lack them, and the overlay is not tagged as held.
	whole := f.left == len(f.state)
	f.mu.Unlock()
	f.goSafe(func() {
		if err := f.storePass(ctx); err != nil {
			f.fail(err)
		}
	})
	if whole {
		f.goSafe(func() { f.tagWhenComplete(ctx) })
	}
}

// tagWhenComplete tags the overlay in the store once every blob was delivered, each either
// from the store or fetched and put there: a later synthesis of it then need not prefetch
// the working set with the index (see HoldsOverlay).
func (f *Fetcher) tagWhenComplete(ctx context.Context) {
	select {
	case <-f.complete:
	case <-ctx.Done(): // Close: the fetch may have completed just before
	}
	select {
	case <-f.complete:
		var recipe []byte
		if p, ok := f.origin.(interface{ prefix([]byte) []byte }); ok {
			head, _ := f.r.Prefix(0, f.r.PrefixLen())
			if b := p.prefix(head); b != nil {
				recipe = storePrefix(f.opts.Store, b, f.r.DigestTable())
			}
		}
		f.opts.Store.Tag(f.r.ID(), f.st.since, recipe)
	default:
	}
}

// HoldsOverlay says whether store (nil: none) holds every chunk of the overlay with this ID,
// as far as it knows: a synthesis then reads only the index before it asks the store.
func HoldsOverlay(store ChunkStore, id string) bool { return store != nil && store.Tagged(id) }

// storeBusyLocked says whether a background run from blob next waits for the store pass: one
// of the blobs the pass leaves to the stream does not.
func (f *Fetcher) storeBusyLocked(next int) bool { return f.st.running && next >= f.st.from }

// demandStoreLocked takes a demanded blob for the store pass, if the pass will look it up or
// holds it now, and says whether it did; the blob is fetched from the origin otherwise.
func (f *Fetcher) demandStoreLocked(b int) bool {
	if !f.st.running || b < f.st.from || !f.r.DigestsLoaded() {
		return false
	}
	switch f.state[b] {
	case blobWaiting:
		if f.st.missed[b] {
			return false // looked up already: the store lacks a chunk of it
		}
		f.st.queue = append(f.st.queue, b)
		f.st.demanded[b] = true
		return true
	case blobInFlight:
		f.st.demanded[b] = true
	}
	return false
}

// storePass delivers from the store every waiting blob it has whole, demanded blobs first.
func (f *Fetcher) storePass(ctx context.Context) error {
	select {
	case <-f.digests:
	case <-ctx.Done():
		return nil
	}
	buf := make([]byte, chunk.Size)
	next := f.st.from
	for ctx.Err() == nil {
		f.mu.Lock()
		b := f.nextStoredLocked(&next)
		if b < 0 {
			f.st.running = false
			f.mu.Unlock()
			f.signal()
			f.finishIfDone()
			return nil
		}
		f.state[b] = blobInFlight
		f.mu.Unlock()
		ok, err := f.deliverStored(b, buf)
		if err != nil {
			return err
		}
		f.mu.Lock()
		if ok {
			f.state[b] = blobDone
			f.left--
		} else {
			f.st.misses.Add(1)
			f.st.missed[b] = true
			f.state[b] = blobWaiting
			if f.st.demanded[b] {
				f.urgent = append(f.urgent, uint32(b))
			}
		}
		delete(f.st.demanded, b)
		f.mu.Unlock()
		f.signal()
		f.finishIfDone()
	}
	return nil
}

// nextStoredLocked is the next blob for the store pass: a demanded one, else the next waiting
// one in prefetch order; -1 when none is left.
func (f *Fetcher) nextStoredLocked(next *int) int {
	for len(f.st.queue) > 0 {
		b := f.st.queue[0]
		f.st.queue = f.st.queue[1:]
		if f.state[b] == blobWaiting {
			return b
		}
	}
	for ; *next < len(f.state); *next++ {
		if b := *next; f.state[b] == blobWaiting && len(f.users[b]) > 0 {
			*next++
			return b
		}
	}
	return -1
}

// deliverStored delivers blob b's chunks from the store, each checked against the digest the
// index pins for it, and says whether it had them all. At the first chunk it lacks it stops:
// the blob is then fetched, and the chunks already delivered stay (a delivery of a chunk that
// is present is a no-op).
func (f *Fetcher) deliverStored(b int, buf []byte) (bool, error) {
	t := time.Now()
	defer f.lap(&f.st.ns, t)
	ix := f.r.Index
	for _, e := range f.users[b] {
		c := ix.Chunks[e]
		im := ix.Images[c.Image]
		want := min(int64(ix.ChunkSize), im.Size-c.Index*int64(ix.ChunkSize))
		d, ok := f.r.ChunkDigest(e)
		if !ok {
			return false, nil
		}
		n, ok := f.opts.Store.Get(d, buf)
		if !ok {
			return false, nil
		}
		if int64(n) != want || chunk.Sum(buf[:n]) != d {
			log.Printf("synthesis: chunk store returned %d bytes for chunk %d of %s that do not match its digest: fetching it", n, c.Index, im.Name)
			return false, nil
		}
		if err := f.fs.Deliver(im.Name, c.Index, buf[:n]); err != nil {
			return false, err
		}
		f.st.bytes.Add(int64(n))
	}
	return true, nil
}

// storePut puts the chunks of a fetched and verified blob into the store. Self references are
// the same bytes as a chunk of the blob, put already.
func (f *Fetcher) storePut(b uint32, raw []byte) {
	if f.opts.Store == nil {
		return
	}
	for _, e := range f.users[b] {
		if c := f.r.Index.Chunks[e]; c.Kind == overlay.KindBlob {
			data := f.rawChunk(raw, e)
			d, ok := f.r.ChunkDigest(e)
			if !ok { // the table is not in yet: the bytes passed their blob's digest
				d = chunk.Sum(data)
			}
			f.opts.Store.Put(d, data)
		}
	}
}

// storeStats adds the store's share to the fetcher's stats.
func (f *Fetcher) storeStats(st *FetchStats) {
	st.FromStoreBytes = f.st.bytes.Load()
	st.StoreSec = time.Duration(f.st.ns.Load()).Seconds()
	st.StoreMissBlobs = f.st.misses.Load()
}
