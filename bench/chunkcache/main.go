// Command chunkcache measures what the shared chunk cache saves. For a base and two overlays
// of it, v1 (an app) and v2 (the same app with one more file), it fetches, without a VM, each
// overlay into a fresh cloudletfs cache and reports the bytes read from the origin (a local
// file here), in three cases: v2 with an empty chunk cache, v2 with v1's chunks in the cache,
// and v2 a second time.
//
//	go run ./bench/chunkcache -home H -base ID -v1 app-v1.overlay -v2 app-v2.overlay
//
// With -row LABEL it prints only one row of a summary table, for the pair named LABEL (the
// header comes from -header), so that a script can put several pairs in one table
// (bench/chunkcache.sh).
//
// What precedes the blobs (header, index, device state) and the chunk digest table no cache can
// spare. Bytes are counted at the origin. Every byte delivered is verified by the fetcher as in
// a synthesis.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

func main() {
	home := flag.String("home", "", "cloudlet home holding the base")
	baseID := flag.String("base", "", "base ID")
	v1 := flag.String("v1", "", "overlay of the app")
	v2 := flag.String("v2", "", "overlay of the app with one more file")
	row := flag.String("row", "", "print only the summary table's row for this pair, named LABEL")
	header := flag.Bool("header", false, "print only the summary table's header (for -row) and exit")
	flag.Parse()
	if *header {
		printHeader(os.Stdout)
		return
	}
	ms, err := run(context.Background(), *home, *baseID, *v1, *v2)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chunkcache:", err)
		os.Exit(1)
	}
	if *row != "" {
		printRow(os.Stdout, *row, ms)
	} else {
		printDetail(os.Stdout, ms)
	}
}

// The cases, in the order they run: each but the first fetches into the chunk cache that the
// ones before it filled.
const (
	caseNoCache = iota // v2 with no chunk cache
	caseV1             // v1 into an empty chunk cache
	caseWithV1         // v2 with v1's chunks in the cache
	caseAgain          // v2 a second time
	nCases
)

var caseNames = [nCases]string{"v2, no chunk cache", "v1 into an empty chunk cache",
	"v2 with v1's chunks in the cache", "v2 again"}

// measures is what one run measured.
type measures struct {
	cases [nCases]result
	cov   cover // of v2 by the cache that holds v1's chunks
}

func run(ctx context.Context, home, baseID, v1, v2 string) (measures, error) {
	var ms measures
	store, err := base.Open(home)
	if err != nil {
		return ms, err
	}
	b, err := store.Get(baseID)
	if err != nil {
		return ms, err
	}
	tmp, err := os.MkdirTemp("", "chunkcache-bench-")
	if err != nil {
		return ms, err
	}
	defer os.RemoveAll(tmp)
	chunks, err := chunkstore.Open(tmp+"/chunks", 4<<30)
	if err != nil {
		return ms, err
	}
	defer chunks.Close()
	files := [nCases]string{v2, v1, v2, v2}
	for i, file := range files {
		var cs synthesis.ChunkStore
		if i != caseNoCache {
			cs = chunks
		}
		if ms.cases[i], err = fetch(ctx, b, file, cs, tmp); err != nil {
			return ms, fmt.Errorf("%s: %w", caseNames[i], err)
		}
		if err := chunks.Flush(ctx); err != nil {
			return ms, err
		}
		if i == caseV1 {
			if ms.cov, err = coverage(ctx, b, v2, chunks); err != nil {
				return ms, err
			}
		}
	}
	return ms, nil
}

// cover is how much of an overlay's stored chunks a chunk cache holds.
type cover struct {
	have, chunks, wholeBlobs, blobs int
	haveBytes, bytes                int64
}

// coverage counts the overlay's stored chunks that the cache holds, and its blobs whose
// chunks it holds all of (the unit the fetcher can spare).
func coverage(ctx context.Context, b *base.Base, file string, chunks *chunkstore.Store) (cover, error) {
	src, err := origin.Open(ctx, file, origin.HTTPOptions{})
	if err != nil {
		return cover{}, err
	}
	defer src.Close()
	r, err := overlay.Open(origin.ReaderAt(ctx, src), src.Size(), synthesis.ExpectFor(b))
	if err != nil {
		return cover{}, err
	}
	defer r.Close()
	ix := r.Index
	c := cover{blobs: len(ix.Blobs)}
	missing := make([]bool, len(ix.Blobs))
	for _, ch := range ix.Chunks {
		if ch.Kind != overlay.KindBlob {
			continue
		}
		n := min(int64(ix.ChunkSize), ix.Images[ch.Image].Size-ch.Index*int64(ix.ChunkSize))
		c.chunks++
		c.bytes += n
		if chunks.Has(ch.Digest) {
			c.have++
			c.haveBytes += n
		} else {
			missing[ch.Blob] = true
		}
	}
	for _, m := range missing {
		if !m {
			c.wholeBlobs++
		}
	}
	return c, nil
}

type result struct {
	size, fetched, head int64 // head: the bytes before the first blob, and the digest table
	stats               synthesis.FetchStats
	took                time.Duration
}

// fetch fetches the overlay into a fresh cloudletfs cache (not mounted) until it is complete.
func fetch(ctx context.Context, b *base.Base, file string, store synthesis.ChunkStore, tmp string) (result, error) {
	start := time.Now()
	file0, err := origin.Open(ctx, file, origin.HTTPOptions{})
	if err != nil {
		return result{}, err
	}
	defer file0.Close()
	src := &counting{Origin: file0}
	r, err := overlay.Open(origin.ReaderAt(ctx, src), src.Size(), synthesis.ExpectFor(b))
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	if _, err := r.Devstate(); err != nil { // as a synthesis reads it
		return result{}, err
	}
	if err := synthesis.CheckOverlay(r, b); err != nil {
		return result{}, err
	}
	imgs, closeImgs, err := b.OpenImages()
	if err != nil {
		return result{}, err
	}
	defer closeImgs()
	cache, err := os.MkdirTemp(tmp, "cache-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(cache)
	f := synthesis.NewFetcher(r, src, imgs, synthesis.FetchOptions{Store: store})
	plans := synthesis.Plans(r.Index)
	cfg := cloudletfs.Config{Dir: cache, Identity: "bench " + r.ID(), Demander: f, DiscardModified: true,
		Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: r.Index.Images[0].Size, Base: b.Path(base.DiskFile), Plan: plans[0]},
			{Name: "memory", Size: r.Index.Images[1].Size, Base: b.Path(base.MemoryFile), Plan: plans[1]},
		}}
	fsys, err := cloudletfs.Open(cfg)
	if err != nil {
		return result{}, err
	}
	defer fsys.Close()
	f.Start(ctx, fsys)
	defer f.Close()
	select {
	case <-f.Complete():
	case <-f.Failed():
		return result{}, f.Err()
	case <-time.After(10 * time.Minute):
		return result{}, fmt.Errorf("not complete after 10 minutes")
	}
	head, _ := r.BlobRange(0)
	if off, n := r.DigestTableRange(); off >= head { // after the working set's blobs
		head += n
	}
	return result{size: src.Size(), fetched: src.n.Load(), head: head, stats: f.Stats(), took: time.Since(start)}, nil
}

// counting is an origin that counts the bytes read from it.
type counting struct {
	origin.Origin
	n atomic.Int64
}

func (c *counting) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := c.Origin.ReadAt(ctx, p, off)
	if err == nil {
		c.n.Add(int64(len(p)))
	}
	return err
}
