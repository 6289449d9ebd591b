// Command ttfr measures time to first response of VM synthesis over emulated links: for a base
// and an overlay (and its profiled twin), at each link speed, it runs every mode several
// times, interleaved, and reports medians and spreads as a Markdown table, JSON and an SVG
// plot, with a breakdown of where the time went.
//
//	go run ./bench/ttfr -cloudlet build/cloudlet -home H -base ID -overlay app.overlay \
//	    -profiled app.profiled.overlay -port 8080 -links 10Mbit,38Mbit,100Mbit,1000Mbit -runs 3 -out bench/ttfr
//
// With several -rtt values (e.g. -links 38Mbit -rtt 0,20ms,50ms,100ms) it is an RTT sweep, and
// the report says how TTFR grows with the RTT.
//
// Modes:
//   - profiled: early start, the profiled working set fetched first;
//   - unprofiled: early start, capture order;
//   - download-first: --no-early-start, everything fetched before the resume (Elijah);
//   - peer: stock QEMU without cloudlet: a qcow2 layer over the base read lazily over HTTP
//     by QEMU's curl driver, RAM from a full migration stream (see peer.go);
//   - local: the profiled overlay with every chunk already local (a reused, complete cache;
//     the overlay read from its file, not over the link): the guest's own time to answer on
//     this machine, one of the two terms of the physical limit (see report.go).
//
// The origin is a shaped loopback HTTP server (one shared token bucket, RTT added per
// request), or with -netns a server in a network namespace of its own behind a veth pair
// shaped by the kernel (see netns.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
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
	path                                    string  // of the probe's URL
	links                                   []int64 // bits per second
	rtts                                    []time.Duration
	runs                                    int
	modes                                   []string
	title                                   string
	out                                     string
	netns                                   bool
	timelines                               string // a directory for each run's timeline, or ""
	needed                                  int64  // bytes of the profiled overlay before its working set ends
	overlayBytes                            int64  // the profiled overlay's size
}

// sample is one synthesis run.
type sample struct {
	Mode        string  `json:"mode"`
	LinkBits    int64   `json:"link_bits_per_s"`
	RTT         float64 `json:"rtt_s"`
	Run         int     `json:"run"`
	TTFR        float64 `json:"ttfr_s"`
	Resumed     float64 `json:"resumed_s"`
	Index       float64 `json:"index_s"`
	Complete    float64 `json:"complete_s"`
	BytesBefore int64   `json:"bytes_before_first_answer"`
	StallMemory float64 `json:"stall_memory_s"`
	StallDisk   float64 `json:"stall_disk_s"`
	// The overlay's chunks the guest touched before its first answer, and those of them that
	// were not local at their first touch (summed over the images).
	Touched int64 `json:"overlay_touched"`
	Missed  int64 `json:"overlay_missed"`
	// Outside counts those the VM waited for that the working set did not hold (see
	// synthesis.FetchStats.OutsideProfile).
	Outside int64 `json:"outside_profile"`
	// Where the fetcher's time went until the first answer.
	Fetch synthesis.FetchStats `json:"fetch_before_first_answer"`
	// The cloudlet process alone (see usage), and with its children (QEMU).
	PeakRSS     int64   `json:"peak_rss_bytes"`
	CPU         float64 `json:"cpu_s"`
	TreePeakRSS int64   `json:"peak_rss_with_children_bytes"`
	TreeCPU     float64 `json:"cpu_with_children_s"`
	// timeline is the run's own output, for -timelines.
	timeline []string
}

var allModes = []string{"profiled", "unprofiled", "download-first", "peer", "local"}

func main() {
	vm.LauncherMain()
	var o options
	var links, modes, rtts string
	flag.StringVar(&o.cloudlet, "cloudlet", "build/cloudlet", "the cloudlet binary")
	flag.StringVar(&o.home, "home", "", "CLOUDLET_HOME holding the base")
	flag.StringVar(&o.base, "base", "", "base ID")
	flag.StringVar(&o.overlay, "overlay", "", "overlay (capture order)")
	flag.StringVar(&o.profiled, "profiled", "", "the same overlay after 'overlay profile'")
	flag.IntVar(&o.port, "port", 8080, "guest port whose first HTTP 200 is the response")
	flag.StringVar(&o.path, "path", "/", "path of the probe's URL on that port")
	flag.StringVar(&links, "links", "10Mbit,38Mbit,100Mbit,1000Mbit", "link speeds")
	flag.StringVar(&rtts, "rtt", "20ms", "delay per request; several (0,20ms,50ms,100ms) make an RTT sweep")
	flag.IntVar(&o.runs, "runs", 3, "runs per mode and link")
	flag.StringVar(&modes, "modes", strings.Join(allModes, ","), "modes to run")
	flag.StringVar(&o.title, "title", "", "what is measured, for the report (e.g. the guest)")
	flag.StringVar(&o.out, "out", "bench/ttfr", "output prefix: .md, .json and .svg are written")
	flag.StringVar(&o.timelines, "timelines", "", "write each run's timeline (the synthesis's JSON events) to MODE-LINK-RTT-RUN.jsonl in this directory")
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
		rtt, err := time.ParseDuration(rtts)
		if err != nil {
			fail(fmt.Errorf("-rtt: %w", err))
		}
		if err := serveDir(*serve, *listen, rtt); err != nil {
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
	for _, r := range strings.Split(rtts, ",") {
		d, err := time.ParseDuration(r)
		if err != nil || d < 0 {
			fail(fmt.Errorf("-rtt: %q: want a duration such as 20ms", r))
		}
		o.rtts = append(o.rtts, d)
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
	if o.timelines != "" {
		// Made before the first run, so that a bad directory fails now, not after minutes.
		if err := os.MkdirAll(o.timelines, 0o755); err != nil {
			fail(fmt.Errorf("-timelines: %w", err))
		}
	}
	var err error
	if o.needed, err = neededBytes(o.profiled); err != nil {
		fail(err)
	}
	if st, err := os.Stat(o.profiled); err != nil {
		fail(err)
	} else {
		o.overlayBytes = st.Size()
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
	localCache := ""
	if slices.Contains(o.modes, "local") {
		if localCache, err = prepareLocal(ctx, o, work); err != nil {
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
	progress := progress{total: len(o.links) * len(o.rtts) * o.runs * len(o.modes)}
	for _, bits := range o.links {
		for _, rtt := range o.rtts {
			c := condition{bits: bits, rtt: rtt, work: work, localCache: localCache}
			s, err := measureLink(ctx, o, p, c, files, &progress)
			if err != nil {
				return nil, err
			}
			samples = append(samples, s...)
		}
	}
	return samples, nil
}

type progress struct{ done, total int }

// condition is one link setting and what the modes need under it.
type condition struct {
	bits       int64
	rtt        time.Duration
	work       string
	localCache string // the complete cache of the local mode
}

func (c condition) String() string {
	return fmt.Sprintf("%s, RTT %v", mbitLabel(c.bits), c.rtt)
}

// measureLink runs every mode o.runs times over one link, interleaved: each run goes through
// every mode. The link (and with -netns its namespace) is gone when it returns.
func measureLink(ctx context.Context, o options, p *peer, c condition, files map[string][]byte, pr *progress) ([]sample, error) {
	l, err := newLink(ctx, o, c.bits, c.rtt, c.work)
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
	jobs := map[string]job{
		"profiled":       {source: urls["app.profiled.overlay"], link: l, bits: c.bits},
		"unprofiled":     {source: urls["app.overlay"], link: l, bits: c.bits},
		"download-first": {source: urls["app.overlay"], link: l, bits: c.bits, downloadFirst: true},
		"local":          {source: o.profiled, cache: c.localCache},
	}
	var samples []sample
	for run := range o.runs {
		for _, mode := range o.modes {
			pr.done++
			fmt.Fprintf(os.Stderr, "[%d/%d] %s, run %d, %s\n", pr.done, pr.total, c, run+1, mode)
			var s sample
			if mode == "peer" {
				s, err = p.run(ctx, l)
			} else {
				s, err = synthesise(ctx, o, jobs[mode])
			}
			if err != nil {
				return nil, fmt.Errorf("%s at %s: %w", mode, c, err)
			}
			s.Mode, s.LinkBits, s.RTT, s.Run = mode, c.bits, c.rtt.Seconds(), run
			if err := saveTimeline(o.timelines, s); err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "      TTFR %.2f s, %.1f MB before it, %d of %d overlay chunks touched missed, peak RSS %.0f MB, CPU %.2f s\n",
				s.TTFR, float64(s.BytesBefore)/1e6, s.Missed, s.Touched, float64(s.PeakRSS)/1e6, s.CPU)
			samples = append(samples, s)
		}
	}
	return samples, nil
}

// saveTimeline writes a run's timeline into dir, if one was asked for.
func saveTimeline(dir string, s sample) error {
	if dir == "" || s.timeline == nil {
		return nil
	}
	name := fmt.Sprintf("%s-%dbit-rtt%dms-run%d.jsonl", s.Mode, s.LinkBits, int(s.RTT*1000), s.Run+1)
	return os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(s.timeline, "\n")+"\n"), 0o644)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
