package cloudletfs

import (
	"errors"
	"fmt"
	"log"
	"runtime"
	"sync"

	"github.com/cloudlet/cloudlet/chunk"
)

// A reused cache is checked once, at Open, rather than lazily on first read: at open nothing
// else runs yet, so a chunk found bad simply becomes pending again, and no read path needs to
// know about chunks that are cached but not yet trusted. It costs one sequential read and
// SHA-256 of the present chunks (see BenchmarkVerifyAtOpen).

// verifyRun is how many chunks are read from the cache file at a time while verifying.
const verifyRun = 256

// maxVerifyLog is how many bad chunks are logged one by one; the rest are counted.
const maxVerifyLog = 16

// verifyPresent checks the chunks recorded present against the digests the overlay promises
// and returns those whose bytes are not the overlay's: changed behind cloudletfs's back (a
// disk error, a tool, an older version's bug), or not stored by the overlay at all. Each is
// logged with its image and chunk. The image is checked in one contiguous shard per CPU.
func (img *Image) verifyPresent(expected func(int64) (chunk.Digest, bool), l *log.Logger) ([]int64, error) {
	shards := int64(runtime.GOMAXPROCS(0))
	per := (img.chunks + shards - 1) / shards
	found := make([][]badChunk, shards)
	errs := make([]error, shards)
	var wg sync.WaitGroup
	for i := range shards {
		wg.Go(func() {
			found[i], errs[i] = img.verifyRange(expected, i*per, min((i+1)*per, img.chunks))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var bad []int64
	for _, f := range found {
		for _, b := range f {
			if len(bad) < maxVerifyLog {
				l.Printf("cloudletfs: image %s: cached chunk %d %s: fetching it again", img.name, b.c, b.why)
			}
			bad = append(bad, b.c)
		}
	}
	if len(bad) > maxVerifyLog {
		l.Printf("cloudletfs: image %s: %d cached chunks are not the overlay's: fetching them again", img.name, len(bad))
	}
	return bad, nil
}

// badChunk is a present chunk that failed verification, and why.
type badChunk struct {
	c   int64
	why string
}

// verifyRange checks the present chunks in [from, to), reading runs of them at once.
func (img *Image) verifyRange(expected func(int64) (chunk.Digest, bool), from, to int64) ([]badChunk, error) {
	var bad []badChunk
	buf := make([]byte, verifyRun*chunk.Size)
	for first := from; first < to; {
		if img.state[first] != StatePresent {
			first++
			continue
		}
		last := first
		for last+1 < to && last+1-first < verifyRun && img.state[last+1] == StatePresent {
			last++
		}
		off, _ := img.chunkSpan(first)
		lastOff, lastLen := img.chunkSpan(last)
		run := buf[:lastOff+lastLen-off]
		if _, err := img.cache.ReadAt(run, off); err != nil {
			return nil, fmt.Errorf("image %s: verify cached chunks %d-%d: %w", img.name, first, last, err)
		}
		for c := first; c <= last; c++ {
			cOff, cLen := img.chunkSpan(c)
			if why := checkChunk(expected, c, run[cOff-off:cOff-off+cLen]); why != "" {
				bad = append(bad, badChunk{c, why})
			}
		}
		first = last + 1
	}
	return bad, nil
}

// checkChunk says what is wrong with a cached chunk's bytes, or "" if they are the overlay's.
func checkChunk(expected func(int64) (chunk.Digest, bool), c int64, data []byte) string {
	want, ok := expected(c)
	if !ok {
		return "is not one the overlay stores"
	}
	if got := chunk.Sum(data); got != want {
		return fmt.Sprintf("has digest %s, want %s", got, want)
	}
	return ""
}
