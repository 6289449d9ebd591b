package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
)

// job is one 'cloudlet synthesis' to measure.
type job struct {
	source        string // the overlay: a URL on the link, or a local file
	link          link   // nil: the source is local, nothing crosses the link
	bits          int64  // the link's speed, for the probe's timeout; 0 without a link
	downloadFirst bool
	cache         string // a --cache directory to reuse; "" for a fresh one
}

// probeTimeout is how long a synthesis may take to answer: the CLI's default, plus twice the
// overlay at the link's speed (a 1 Mbit/s run of a 50 MB overlay needs minutes).
func (j job) probeTimeout(overlayBytes int64) time.Duration {
	t := 5 * time.Minute
	if j.bits > 0 {
		t += time.Duration(2 * float64(overlayBytes) * 8 / float64(j.bits) * float64(time.Second))
	}
	return t
}

// synthesise runs one 'cloudlet synthesis' and reads its JSON timeline as it comes, so that
// the origin's byte count is read at the first answer.
func synthesise(ctx context.Context, o options, j job) (sample, error) {
	var s sample
	hostPort, err := freePort()
	if err != nil {
		return s, err
	}
	// Without the shared chunk cache: each run must fetch the overlay, as a first synthesis
	// on a cloudlet does.
	args := []string{"--json", "synthesis", o.base, j.source, "--exit-when-complete", "--chunk-cache-size", "0",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:%d", hostPort, o.port),
		"--probe", fmt.Sprintf("http://127.0.0.1:%d%s", hostPort, o.path),
		"--probe-timeout", j.probeTimeout(o.overlayBytes).String()}
	if j.downloadFirst {
		args = append(args, "--no-early-start")
	}
	if j.cache != "" {
		args = append(args, "--cache", j.cache)
	}
	cmd := exec.CommandContext(ctx, o.cloudlet, args...)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+o.home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return s, err
	}
	served := func() int64 { return 0 }
	if j.link != nil {
		served = j.link.bytesServed
	}
	before := served()
	if err := cmd.Start(); err != nil {
		return s, err
	}
	watch := watchUsage(cmd.Process.Pid)
	s.timeline = readTimeline(out, &s, func() int64 { return served() - before })
	u, uerr := watch.exited()
	if err := cmd.Wait(); err != nil {
		return s, fmt.Errorf("%v: %s", err, stderr.String())
	}
	if uerr != nil {
		return s, fmt.Errorf("usage of the cloudlet process: %w", uerr)
	}
	u.withTree(cmd.ProcessState)
	s.PeakRSS, s.CPU, s.TreePeakRSS, s.TreeCPU = u.PeakRSS, u.CPU, u.TreePeakRSS, u.TreeCPU
	if s.TTFR == 0 {
		return s, fmt.Errorf("no first answer in %q", strings.Join(s.timeline, "\n"))
	}
	return s, nil
}

// readTimeline fills s from the timeline's events until the output ends, and returns its lines.
func readTimeline(out io.Reader, s *sample, servedSince func() int64) []string {
	var lines []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		var e synthesis.Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		switch e.Name {
		case "index":
			s.Index = e.Seconds
		case "resumed":
			s.Resumed = e.Seconds
		case "first_answer":
			s.TTFR, s.BytesBefore = e.Seconds, servedSince()
			s.StallMemory, s.StallDisk = e.Stall["memory"], e.Stall["disk"]
			for _, n := range e.Touched {
				s.Touched += n
			}
			for _, n := range e.Missed {
				s.Missed += n
			}
			if e.Fetch != nil {
				s.Fetch, s.Outside = *e.Fetch, e.Fetch.OutsideProfile
			}
		case "complete":
			s.Complete = e.Seconds
		}
	}
	// A line the scanner cannot take ends the loop: drain the rest, or the process would
	// block on its output and never exit.
	io.Copy(io.Discard, out)
	return lines
}

// prepareLocal makes the cache the local mode reuses: the profiled overlay, read from its
// file, fetched whole before a resume that ends at once (no probe). A local synthesis over it
// then has every chunk already there, bar the few disk chunks that VM wrote: a reused cache
// forgets what the VM wrote, and those come again from the local file.
func prepareLocal(ctx context.Context, o options, work string) (string, error) {
	cache := filepath.Join(work, "local-cache")
	cmd := exec.CommandContext(ctx, o.cloudlet, "synthesis", o.base, o.profiled, "--no-early-start", "--exit-when-complete", "--cache", cache,
		"--chunk-cache-size", "0")
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+o.home)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("local: fill the cache: %w: %s", err, out)
	}
	return cache, nil
}
