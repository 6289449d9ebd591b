// Command ttfr measures time to first response of VM synthesis over emulated links: for a base
// and an overlay (and its profiled twin), at each link speed, it runs every mode several
// times, interleaved, through the cloudlet command, and reports medians and spreads as a
// Markdown table, JSON and an SVG plot.
//
//	go run ./bench/ttfr -cloudlet build/cloudlet -home H -base ID -overlay app.overlay \
//	    -profiled app.profiled.overlay -port 8080 -links 10Mbit,38Mbit,100Mbit,1000Mbit -runs 3 -out bench/ttfr
//
// Modes: "profiled" (early start, profiled working set), "unprofiled" (early start, capture
// order), "download-first" (--no-early-start: the Elijah baseline). The origin is a shaped
// loopback HTTP server (one shared token bucket, RTT added per request).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
)

type options struct {
	cloudlet, home, base, overlay, profiled string
	port                                    int
	links                                   []int64 // bits per second
	rtt                                     time.Duration
	runs                                    int
	out                                     string
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
}

var modes = []string{"profiled", "unprofiled", "download-first"}

func main() {
	var o options
	var links string
	flag.StringVar(&o.cloudlet, "cloudlet", "build/cloudlet", "the cloudlet binary")
	flag.StringVar(&o.home, "home", "", "CLOUDLET_HOME holding the base")
	flag.StringVar(&o.base, "base", "", "base ID")
	flag.StringVar(&o.overlay, "overlay", "", "overlay (capture order)")
	flag.StringVar(&o.profiled, "profiled", "", "the same overlay after 'overlay profile'")
	flag.IntVar(&o.port, "port", 8080, "guest port whose first HTTP 200 is the response")
	flag.StringVar(&links, "links", "10Mbit,38Mbit,100Mbit,1000Mbit", "link speeds")
	flag.DurationVar(&o.rtt, "rtt", 20*time.Millisecond, "delay per request")
	flag.IntVar(&o.runs, "runs", 3, "runs per mode and link")
	flag.StringVar(&o.out, "out", "bench/ttfr", "output prefix: .md, .json and .svg are written")
	flag.Parse()
	for _, l := range strings.Split(links, ",") {
		v, err := synthesis.ParseRate(l)
		if err != nil {
			fail(fmt.Errorf("-links: %w", err))
		}
		o.links = append(o.links, v*8)
	}
	if o.home == "" || o.base == "" || o.overlay == "" || o.profiled == "" {
		fail(fmt.Errorf("-home, -base, -overlay and -profiled are required"))
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

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ttfr:", err)
	os.Exit(1)
}

func measure(ctx context.Context, o options) ([]sample, error) {
	files := map[string]string{"profiled": o.profiled, "unprofiled": o.overlay, "download-first": o.overlay}
	var samples []sample
	total, done := len(o.links)*o.runs*len(modes), 0
	for _, bits := range o.links {
		servers := map[string]*synthesis.ShapedServer{}
		for _, f := range []string{o.overlay, o.profiled} {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			s := synthesis.NewShapedServer(data)
			defer s.Close()
			s.Shape(o.rtt, bits/8)
			servers[f] = s
		}
		for run := range o.runs {
			for _, mode := range modes { // interleaved: each run goes through every mode
				done++
				fmt.Fprintf(os.Stderr, "[%d/%d] %d Mbit/s, run %d, %s\n", done, total, bits/1e6, run+1, mode)
				s, err := synthesise(ctx, o, servers[files[mode]].URL(), mode == "download-first")
				if err != nil {
					return nil, fmt.Errorf("%s at %d Mbit/s: %w", mode, bits/1e6, err)
				}
				s.Mode, s.LinkBits, s.Run = mode, bits, run
				samples = append(samples, s)
			}
		}
	}
	return samples, nil
}

// synthesise runs one 'cloudlet synthesis' and reads its JSON timeline.
func synthesise(ctx context.Context, o options, url string, downloadFirst bool) (sample, error) {
	var s sample
	hostPort, err := freePort()
	if err != nil {
		return s, err
	}
	args := []string{"--json", "synthesis", o.base, url, "--exit-when-complete",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:%d", hostPort, o.port),
		"--probe", fmt.Sprintf("http://127.0.0.1:%d/", hostPort)}
	if downloadFirst {
		args = append(args, "--no-early-start")
	}
	cmd := exec.CommandContext(ctx, o.cloudlet, args...)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+o.home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return s, fmt.Errorf("%v: %s", err, stderr.String())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
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
			s.TTFR, s.BytesBefore = e.Seconds, e.Bytes
			s.StallMemory, s.StallDisk = e.Stall["memory"], e.Stall["disk"]
		case "complete":
			s.Complete = e.Seconds
		}
	}
	if s.TTFR == 0 {
		return s, fmt.Errorf("no first answer in %q", out)
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

// stat is a median with its spread.
type stat struct{ Median, Min, Max float64 }

func summarise(v []float64) stat {
	sort.Float64s(v)
	return stat{v[len(v)/2], v[0], v[len(v)-1]}
}

func (s stat) String() string { return fmt.Sprintf("%.2f (%.2f–%.2f)", s.Median, s.Min, s.Max) }

type row struct {
	Mode        string  `json:"mode"`
	LinkMbit    int64   `json:"link_mbit"`
	TTFR        stat    `json:"ttfr_s"`
	BytesBefore stat    `json:"bytes_before_first_answer"`
	Complete    stat    `json:"complete_s"`
	StallMemory stat    `json:"stall_memory_s"`
	StallDisk   stat    `json:"stall_disk_s"`
	Limit       float64 `json:"physical_limit_s"`
}

func rows(o options, samples []sample) []row {
	var out []row
	for _, bits := range o.links {
		// The physical limit: index and resume as measured, plus the bytes the profiled run
		// needed before its first answer at the link's speed, plus one RTT for the request.
		var limit float64
		for _, mode := range modes {
			var ttfr, bytesB, comp, sm, sd, res []float64
			for _, s := range samples {
				if s.Mode == mode && s.LinkBits == bits {
					ttfr = append(ttfr, s.TTFR)
					bytesB = append(bytesB, float64(s.BytesBefore))
					comp = append(comp, s.Complete)
					sm = append(sm, s.StallMemory)
					sd = append(sd, s.StallDisk)
					res = append(res, s.Resumed-s.Index)
				}
			}
			r := row{Mode: mode, LinkMbit: bits / 1e6, TTFR: summarise(ttfr), BytesBefore: summarise(bytesB),
				Complete: summarise(comp), StallMemory: summarise(sm), StallDisk: summarise(sd)}
			if mode == "profiled" {
				limit = summarise(res).Median + r.BytesBefore.Median*8/float64(bits) + o.rtt.Seconds()
			}
			r.Limit = limit
			out = append(out, r)
		}
	}
	return out
}

func report(o options, samples []sample) error {
	rs := rows(o, samples)
	var md strings.Builder
	fmt.Fprintf(&md, "| link | mode | TTFR s, median (min–max) | MB before first answer | complete s | stall memory s | stall disk s | physical limit s |\n")
	fmt.Fprintf(&md, "|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&md, "| %d Mbit/s | %s | %s | %.1f | %.2f | %.2f | %.2f | %.2f |\n", r.LinkMbit, r.Mode, r.TTFR,
			r.BytesBefore.Median/1e6, r.Complete.Median, r.StallMemory.Median, r.StallDisk.Median, r.Limit)
	}
	fmt.Fprintf(&md, "\nRatios we track:\n\n| link | early-start TTFR ÷ physical limit (goal ≤ 1.25) | download-first ÷ early start (goal ≥ 8 at 38 Mbit/s) |\n|---|---|---|\n")
	for i := 0; i+2 < len(rs); i += len(modes) {
		p, d := rs[i], rs[i+2]
		fmt.Fprintf(&md, "| %d Mbit/s | %.2f | %.1f |\n", p.LinkMbit, p.TTFR.Median/p.Limit, d.TTFR.Median/p.TTFR.Median)
	}
	fmt.Print(md.String())
	if err := os.WriteFile(o.out+".md", []byte(md.String()), 0o644); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(map[string]any{"rtt_s": o.rtt.Seconds(), "runs": o.runs, "rows": rs, "samples": samples}, "", "  ")
	if err := os.WriteFile(o.out+".json", j, 0o644); err != nil {
		return err
	}
	return os.WriteFile(o.out+".svg", []byte(plot(o, rs)), 0o644)
}

// plot draws TTFR by link speed as grouped bars, one colour per mode, on a log scale.
func plot(o options, rs []row) string {
	const w, h, left, bottom, top = 720, 360, 60, 50, 30
	colours := map[string]string{"profiled": "#1b9e77", "unprofiled": "#7570b3", "download-first": "#d95f02"}
	maxT := 0.0
	for _, r := range rs {
		maxT = max(maxT, r.TTFR.Max)
	}
	logMax := logCeil(maxT)
	y := func(t float64) float64 {
		frac := (log10(max(t, 0.01)) + 2) / (logMax + 2) // axis from 0.01 s
		return float64(h-bottom) - frac*float64(h-bottom-top)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14">Time to first response by link speed (log scale; RTT %v)</text>`+"\n", left, o.rtt)
	for e := -2.0; e <= logMax; e++ {
		t := pow10(e)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%g s</text>`+"\n",
			left, w-10, y(t), y(t), left-5, y(t)+4, t)
	}
	groupW := float64(w-left-20) / float64(len(o.links))
	barW := groupW / float64(len(modes)+1)
	for gi, bits := range o.links {
		x0 := float64(left) + float64(gi)*groupW + barW/2
		for mi, mode := range modes {
			for _, r := range rs {
				if r.Mode != mode || r.LinkMbit != bits/1e6 {
					continue
				}
				x := x0 + float64(mi)*barW
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %.2f s</title></rect>`+"\n",
					x, y(r.TTFR.Median), barW*0.9, float64(h-bottom)-y(r.TTFR.Median), colours[mode], mode, r.TTFR.Median)
			}
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d Mbit/s</text>`+"\n", x0+barW*1.5, h-bottom+18, bits/1e6)
	}
	for mi, mode := range modes {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left+mi*170, h-16, colours[mode], left+mi*170+16, h-6, mode)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func log10(v float64) float64 { return math.Log10(v) }
func pow10(e float64) float64 { return math.Pow(10, e) }
func logCeil(v float64) float64 {
	return math.Max(0, math.Ceil(math.Log10(math.Max(v, 1))))
}
