// Command ttfr measures time to first response of VM synthesis over emulated links: for a base
// and an overlay (and its profiled twin), at each link speed, it runs every mode several
// times, interleaved, and reports medians and spreads as a Markdown table, JSON and an SVG
// plot, with a breakdown of where the time went.
//
//	go run ./bench/ttfr -cloudlet build/cloudlet -home H -base ID -overlay app.overlay \
//	    -profiled app.profiled.overlay -port 8080 -links 10Mbit,38Mbit,100Mbit,1000Mbit -runs 3 -out bench/ttfr
//
// Modes:
//   - profiled: early start, the profiled working set fetched first;
//   - unprofiled: early start, capture order;
//   - download-first: --no-early-start, everything fetched before the resume (Elijah);
//   - peer: stock QEMU without cloudlet: a qcow2 layer over the base read lazily over HTTP
//     by QEMU's curl driver, RAM from a full migration stream (see peer.go).
//
// The origin is a shaped loopback HTTP server (one shared token bucket, RTT added per
// request), or with -netns a server in a network namespace of its own behind a veth pair
// shaped by the kernel (see netns.go).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/vm"
)

type options struct {
	cloudlet, home, base, overlay, profiled string
	port                                    int
	links                                   []int64 // bits per second
	rtt                                     time.Duration
	runs                                    int
	modes                                   []string
	title                                   string
	out                                     string
	netns                                   bool
	needed                                  int64 // bytes of the profiled overlay before its working set ends
}

// sample is one synthesis run.
type sample struct {
	Mode        string  `json:"mode"`
	LinkBits    int64   `json:"link_bits_per_s"`
	Run         int     `json:"run"`
	TTFR        float64 `json:"ttfr_s"`
	Resumed     float64 `json:"resumed_s"`
	Index       float64 `json:"index_s"`
	Complete    float64 `json:"complete_s"`
	BytesBefore int64   `json:"bytes_before_first_answer"`
	StallMemory float64 `json:"stall_memory_s"`
	StallDisk   float64 `json:"stall_disk_s"`
	// Where the fetcher's time went until the first answer.
	Fetch synthesis.FetchStats `json:"fetch_before_first_answer"`
}

var allModes = []string{"profiled", "unprofiled", "download-first", "peer"}

func main() {
	vm.LauncherMain()
	var o options
	var links, modes string
	flag.StringVar(&o.cloudlet, "cloudlet", "build/cloudlet", "the cloudlet binary")
	flag.StringVar(&o.home, "home", "", "CLOUDLET_HOME holding the base")
	flag.StringVar(&o.base, "base", "", "base ID")
	flag.StringVar(&o.overlay, "overlay", "", "overlay (capture order)")
	flag.StringVar(&o.profiled, "profiled", "", "the same overlay after 'overlay profile'")
	flag.IntVar(&o.port, "port", 8080, "guest port whose first HTTP 200 is the response")
	flag.StringVar(&links, "links", "10Mbit,38Mbit,100Mbit,1000Mbit", "link speeds")
	flag.DurationVar(&o.rtt, "rtt", 20*time.Millisecond, "delay per request")
	flag.IntVar(&o.runs, "runs", 3, "runs per mode and link")
	flag.StringVar(&modes, "modes", strings.Join(allModes, ","), "modes to run")
	flag.StringVar(&o.title, "title", "", "what is measured, for the report (e.g. the guest)")
	flag.StringVar(&o.out, "out", "bench/ttfr", "output prefix: .md, .json and .svg are written")
	flag.BoolVar(&o.netns, "netns", false, "shape the link in the kernel: origin in a network namespace behind a veth pair (root)")
	serve := flag.String("serve-dir", "", "(internal) serve this directory as the -netns origin")
	listen := flag.String("listen", "", "(internal) the -netns origin's address")
	rerun := flag.String("report", "", "render the report again from this JSON report (written to -out), measuring nothing")
	flag.Parse()
	if *rerun != "" {
		if err := rerender(*rerun, o.out); err != nil {
			fail(err)
		}
		return
	}
	if *serve != "" {
		if err := serveDir(*serve, *listen, o.rtt); err != nil {
			fail(err)
		}
		return
	}
	for _, l := range strings.Split(links, ",") {
		v, err := synthesis.ParseRate(l)
		if err != nil {
			fail(fmt.Errorf("-links: %w", err))
		}
		o.links = append(o.links, v*8)
	}
	for _, m := range strings.Split(modes, ",") {
		if !slices.Contains(allModes, m) {
			fail(fmt.Errorf("-modes: %q is not one of %v", m, allModes))
		}
	}
	for _, m := range allModes { // report order, whatever the flag's order
		if slices.Contains(strings.Split(modes, ","), m) {
			o.modes = append(o.modes, m)
		}
	}
	if o.home == "" || o.base == "" || o.overlay == "" || o.profiled == "" {
		fail(fmt.Errorf("-home, -base, -overlay and -profiled are required"))
	}
	var err error
	if o.needed, err = neededBytes(o.profiled); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	samples, err := measure(ctx, o)
	if err != nil {
		fail(err)
	}
	if err := report(o, samples); err != nil {
		fail(err)
	}
}

// neededBytes is what a VM cannot answer without: the profiled overlay's header, index and
// device state, and its working-set blobs, which come first in the file.
func neededBytes(profiled string) (int64, error) {
	f, err := os.Open(profiled)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	r, err := overlay.Open(f, st.Size(), overlay.Expect{})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", profiled, err)
	}
	defer r.Close()
	ws := int(r.Index.WorkingSetBlobs)
	if ws == 0 {
		return 0, fmt.Errorf("%s is not profiled (no working set): run 'cloudlet overlay profile' on it", profiled)
	}
	off, n := r.BlobRange(ws - 1)
	return off + n, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ttfr:", err)
	os.Exit(1)
}

// link is one emulated link: the origin serving the overlays (and the peer's files).
type link interface {
	// url serves data under name and returns where.
	url(name string, data []byte) (string, error)
	// bytesServed counts what the origin sent so far.
	bytesServed() int64
	Close() error
}

func measure(ctx context.Context, o options) ([]sample, error) {
	work, err := os.MkdirTemp("", "cloudlet-ttfr-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	var p *peer
	if slices.Contains(o.modes, "peer") {
		if p, err = preparePeer(ctx, o, work); err != nil {
			return nil, err
		}
	}
	// What each origin serves, read once: name on the origin -> bytes.
	files := map[string][]byte{}
	for name, f := range map[string]string{"app.overlay": o.overlay, "app.profiled.overlay": o.profiled} {
		if files[name], err = os.ReadFile(f); err != nil {
			return nil, err
		}
	}
	if p != nil {
		files["peer-disk.qcow2"], files["peer-memory.zst"] = p.disk, p.memory
	}
	var samples []sample
	progress := progress{total: len(o.links) * o.runs * len(o.modes)}
	for _, bits := range o.links {
		s, err := measureLink(ctx, o, p, bits, work, files, &progress)
		if err != nil {
			return nil, err
		}
		samples = append(samples, s...)
	}
	return samples, nil
}

type progress struct{ done, total int }

// measureLink runs every mode o.runs times over one link, interleaved: each run goes through
// every mode. The link (and with -netns its namespace) is gone when it returns.
func measureLink(ctx context.Context, o options, p *peer, bits int64, work string, files map[string][]byte, pr *progress) ([]sample, error) {
	l, err := newLink(ctx, o, bits, work)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	urls := map[string]string{}
	for name, data := range files {
		if urls[name], err = l.url(name, data); err != nil {
			return nil, err
		}
	}
	if p != nil {
		p.diskURL, p.memURL = urls["peer-disk.qcow2"], urls["peer-memory.zst"]
	}
	source := map[string]string{"profiled": urls["app.profiled.overlay"], "unprofiled": urls["app.overlay"], "download-first": urls["app.overlay"]}
	var samples []sample
	for run := range o.runs {
		for _, mode := range o.modes {
			pr.done++
			fmt.Fprintf(os.Stderr, "[%d/%d] %d Mbit/s, run %d, %s\n", pr.done, pr.total, bits/1e6, run+1, mode)
			var s sample
			if mode == "peer" {
				s, err = p.run(ctx, l)
			} else {
				s, err = synthesise(ctx, o, l, source[mode], mode == "download-first")
			}
			if err != nil {
				return nil, fmt.Errorf("%s at %d Mbit/s: %w", mode, bits/1e6, err)
			}
			s.Mode, s.LinkBits, s.Run = mode, bits, run
			fmt.Fprintf(os.Stderr, "      TTFR %.2f s, %.1f MB before it\n", s.TTFR, float64(s.BytesBefore)/1e6)
			samples = append(samples, s)
		}
	}
	return samples, nil
}

// synthesise runs one 'cloudlet synthesis' and reads its JSON timeline as it comes, so that
// the origin's byte count is read at the first answer.
func synthesise(ctx context.Context, o options, l link, url string, downloadFirst bool) (sample, error) {
	var s sample
	hostPort, err := freePort()
	if err != nil {
		return s, err
	}
	// Without the shared chunk cache: each run must fetch the overlay, as a first synthesis
	// on a cloudlet does.
	args := []string{"--json", "synthesis", o.base, url, "--exit-when-complete", "--chunk-cache-size", "0",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:%d", hostPort, o.port),
		"--probe", fmt.Sprintf("http://127.0.0.1:%d/", hostPort)}
	if downloadFirst {
		args = append(args, "--no-early-start")
	}
	cmd := exec.CommandContext(ctx, o.cloudlet, args...)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+o.home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return s, err
	}
	before := l.bytesServed()
	if err := cmd.Start(); err != nil {
		return s, err
	}
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
			s.TTFR, s.BytesBefore = e.Seconds, l.bytesServed()-before
			s.StallMemory, s.StallDisk = e.Stall["memory"], e.Stall["disk"]
			if e.Fetch != nil {
				s.Fetch = *e.Fetch
			}
		case "complete":
			s.Complete = e.Seconds
		}
	}
	if err := cmd.Wait(); err != nil {
		return s, fmt.Errorf("%v: %s", err, stderr.String())
	}
	if s.TTFR == 0 {
		return s, fmt.Errorf("no first answer in %q", strings.Join(lines, "\n"))
	}
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
