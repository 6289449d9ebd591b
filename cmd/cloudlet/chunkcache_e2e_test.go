package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// testChunkCache: two syntheses of the same profiled overlay (the app with a 5 MB file
// besides, about 5.4 MB: far more than its index and device state) from a shaped HTTP origin,
// each into a fresh cache directory, with the chunk cache of the same home: the second fetches
// what precedes the blobs and nothing else (not even the working set, which a first synthesis
// asks for with the index), and answers about as soon as a synthesis from a local file. TCG is
// noisy: the times are printed, and compared only loosely.
func testChunkCache(t *testing.T, ctx context.Context, home, id string) {
	dir := t.TempDir()
	bulky, file, applied := filepath.Join(dir, "bulky.overlay"), filepath.Join(dir, "profiled.overlay"), filepath.Join(dir, "applied")
	if err := os.WriteFile(bulky, bulkyOverlay(t, ctx, home, id), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testguest.FreePort(t)
	if r := run(t, ctx, home, "overlay", "profile", bulky, "--base", id, "-o", file,
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port), "--tail", "200ms"); r.code != 0 {
		t.Fatalf("overlay profile: exit %d\n%s", r.code, r.stderr)
	}
	data := mustRead(t, file)
	if r := run(t, ctx, home, "overlay", "apply", file, "--base", id, "--out", applied); r.code != 0 {
		t.Fatalf("overlay apply: %s", r.stderr)
	}
	baseDir := filepath.Join(home, "bases", id)
	if err := os.RemoveAll(filepath.Join(home, "chunks")); err != nil { // start cold
		t.Fatal(err)
	}
	s := origin.NewShapedServer(data)
	defer s.Close()
	s.Shape(10*time.Millisecond, 38e6/8)
	synth := func(src string, extra ...string) (result, string, float64) {
		cache := t.TempDir()
		port := testguest.FreePort(t)
		r := run(t, ctx, home, append([]string{"synthesis", id, src, "--cache", cache,
			"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port),
			"--probe-timeout", "2m", "--exit-when-complete"}, extra...)...)
		if r.code != 0 {
			t.Fatalf("synthesis of %s: exit %d\n%s\n%s", src, r.code, r.stdout, r.stderr)
		}
		return r, cache, eventSeconds(t, r.stdout, "first_answer")
	}

	first, _, ttfrCold := synth(s.URL(), "--chunk-cache-size", "1G")
	if strings.Contains(first.stdout, "from the chunk cache") {
		t.Fatalf("the first synthesis took chunks from an empty cache:\n%s", first.stdout)
	}
	before := s.Bytes.Load()
	second, cache, ttfrCached := synth(s.URL(), "--chunk-cache-size", "1G")
	fetched := s.Bytes.Load() - before
	checkCache(t, cache, applied, baseDir)
	_, _, ttfrLocal := synth(file, "--chunk-cache-size", "0")
	// The store keeps the index and the device state too: only the probe's first bytes, with
	// the header that checks them, come from the origin.
	head := blobsStart(t, data)
	t.Logf("overlay %d bytes, %d before its first blob; second synthesis fetched %d bytes (%.1f %%)\nTTFR: cold %.3f s, with the chunk cache %.3f s, local file %.3f s\nsecond timeline:\n%s",
		len(data), head, fetched, 100*float64(fetched)/float64(len(data)), ttfrCold, ttfrCached, ttfrLocal, second.stdout)
	if !strings.Contains(second.stdout, "from the chunk cache") {
		t.Fatalf("the second synthesis took nothing from the chunk cache:\n%s", second.stdout)
	}
	if fetched > int64(len(data))/100 {
		t.Fatalf("the second synthesis fetched %d bytes, want at most 1%% of %d", fetched, len(data))
	}
	if ttfrCached > 3*ttfrLocal+2 {
		t.Fatalf("TTFR with the chunk cache %.3f s, against %.3f s from a local file", ttfrCached, ttfrLocal)
	}
}

// blobsStart is where the overlay's first blob starts.
func blobsStart(t *testing.T, data []byte) int64 {
	t.Helper()
	r, err := overlay.Open(bytes.NewReader(data), int64(len(data)), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(r.Index.Blobs) == 0 {
		return int64(len(data))
	}
	off, _ := r.BlobRange(0)
	return off
}

// eventSeconds is the time of a timeline event in the synthesis command's output.
func eventSeconds(t *testing.T, stdout, event string) float64 {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == event {
			if s, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "s"), 64); err == nil {
				return s
			}
		}
	}
	t.Fatalf("no %s event in:\n%s", event, stdout)
	return 0
}
