package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// stat is a median with its spread.
type stat struct{ Median, Min, Max float64 }

func summarise(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
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
	// The breakdown, medians until the first answer.
	Index, Resume                                        float64
	Requests, RequestSec, DecodeSec, VerifySec, WriteSec float64
}

// resumeCost is what a resume costs when nothing has to come over the network first: the
// fastest resume of any early-start run. (A run's own resume time can include waiting for
// chunks QEMU reads while it resumes, which the limit counts as bytes already.)
func resumeCost(samples []sample) float64 {
	best := math.Inf(1)
	for _, s := range samples {
		if s.Mode == "profiled" || s.Mode == "unprofiled" {
			best = min(best, s.Resumed-s.Index)
		}
	}
	if math.IsInf(best, 1) {
		return 0
	}
	return best
}

func rows(o options, samples []sample) []row {
	var out []row
	resume := resumeCost(samples)
	for _, bits := range o.links {
		for _, mode := range o.modes {
			var ttfr, bytesB, comp, sm, sd, idx, res, nreq, req, dec, ver, wr []float64
			for _, s := range samples {
				if s.Mode != mode || s.LinkBits != bits {
					continue
				}
				ttfr = append(ttfr, s.TTFR)
				bytesB = append(bytesB, float64(s.BytesBefore))
				comp = append(comp, s.Complete)
				sm = append(sm, s.StallMemory)
				sd = append(sd, s.StallDisk)
				idx = append(idx, s.Index)
				res = append(res, s.Resumed-s.Index)
				nreq = append(nreq, float64(s.Fetch.Requests))
				req = append(req, s.Fetch.RequestSec)
				dec = append(dec, s.Fetch.DecodeSec)
				ver = append(ver, s.Fetch.VerifySec)
				wr = append(wr, s.Fetch.WriteSec)
			}
			r := row{Mode: mode, LinkMbit: bits / 1e6, TTFR: summarise(ttfr), BytesBefore: summarise(bytesB),
				Complete: summarise(comp), StallMemory: summarise(sm), StallDisk: summarise(sd),
				Index: summarise(idx).Median, Resume: summarise(res).Median, Requests: summarise(nreq).Median,
				RequestSec: summarise(req).Median, DecodeSec: summarise(dec).Median, VerifySec: summarise(ver).Median, WriteSec: summarise(wr).Median}
			// The physical limit: a resume, plus the bytes a VM cannot answer without (header,
			// index, device state, working set) at the link's speed, plus one RTT.
			limit := resume + float64(o.needed)*8/float64(bits) + o.rtt.Seconds()
			r.Limit = limit
			out = append(out, r)
		}
	}
	return out
}

func find(rs []row, mode string, mbit int64) (row, bool) {
	for _, r := range rs {
		if r.Mode == mode && r.LinkMbit == mbit {
			return r, true
		}
	}
	return row{}, false
}

func report(o options, samples []sample) error {
	rs := rows(o, samples)
	var md strings.Builder
	if o.title != "" {
		fmt.Fprintf(&md, "%s\n\n", o.title)
	}
	linkKind := "userspace shaping on loopback (one token bucket, RTT added per request)"
	if o.netns {
		linkKind = "kernel shaping: origin in a network namespace behind a veth pair (tc)"
	}
	fmt.Fprintf(&md, "Link: %s; RTT %v; %d runs per mode and link, interleaved. The physical limit is the resume "+
		"(%.2f s, the fastest early-start resume) plus the %.2f MB a VM cannot answer without (header, index, device "+
		"state and working set of the profiled overlay) at link speed, plus one RTT.\n\n", linkKind, o.rtt, o.runs,
		resumeCost(samples), float64(o.needed)/1e6)
	fmt.Fprintf(&md, "| link | mode | TTFR s, median (min–max) | MB before first answer | complete s | stall memory s | stall disk s | physical limit s |\n")
	fmt.Fprintf(&md, "|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		complete := fmt.Sprintf("%.2f", r.Complete.Median)
		if r.Mode == "peer" {
			complete += " (RAM; disk lazy)"
		}
		fmt.Fprintf(&md, "| %d Mbit/s | %s | %s | %.1f | %s | %.2f | %.2f | %.2f |\n", r.LinkMbit, r.Mode, r.TTFR,
			r.BytesBefore.Median/1e6, complete, r.StallMemory.Median, r.StallDisk.Median, r.Limit)
	}

	fmt.Fprintf(&md, "\nRatios we track (medians):\n\n| link | profiled ÷ physical limit (goal ≤ 1.25) | download-first ÷ profiled (goal ≥ 8 at 38 Mbit/s) | peer ÷ profiled |\n|---|---|---|---|\n")
	for _, bits := range o.links {
		mbit := bits / 1e6
		p, ok := find(rs, "profiled", mbit)
		if !ok {
			continue
		}
		ratio := func(mode string) string {
			if r, ok := find(rs, mode, mbit); ok {
				return fmt.Sprintf("%.1f", r.TTFR.Median/p.TTFR.Median)
			}
			return "–"
		}
		fmt.Fprintf(&md, "| %d Mbit/s | %.2f | %s | %s |\n", mbit, p.TTFR.Median/p.Limit, ratio("download-first"), ratio("peer"))
	}

	fmt.Fprintf(&md, "\nWhere the time goes until the first answer (medians; fetcher times are summed over its workers):\n\n")
	fmt.Fprintf(&md, "| link | mode | index s | resume s | stall memory s | stall disk s | range requests | waiting on them s | decode s | chunk digests s | cache writes s |\n")
	fmt.Fprintf(&md, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		if r.Mode == "peer" {
			fmt.Fprintf(&md, "| %d Mbit/s | peer | – | %.2f (whole RAM stream) | – | – | – | – | – | – | – |\n", r.LinkMbit, r.Resume)
			continue
		}
		fmt.Fprintf(&md, "| %d Mbit/s | %s | %.2f | %.2f | %.2f | %.2f | %.0f | %.2f | %.3f | %.3f | %.3f |\n", r.LinkMbit, r.Mode,
			r.Index, r.Resume, r.StallMemory.Median, r.StallDisk.Median, r.Requests, r.RequestSec, r.DecodeSec, r.VerifySec, r.WriteSec)
	}
	fmt.Print(md.String())
	if err := os.WriteFile(o.out+".md", []byte(md.String()), 0o644); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(saved{Title: o.title, RTT: o.rtt.Seconds(), Netns: o.netns, Runs: o.runs, Links: o.links,
		Modes: o.modes, Needed: o.needed, Rows: rs, Samples: samples}, "", "  ")
	if err := os.WriteFile(o.out+".json", j, 0o644); err != nil {
		return err
	}
	return os.WriteFile(o.out+".svg", []byte(plot(o, rs)), 0o644)
}

// saved is the JSON report; -report renders it again (after a change to the report itself).
type saved struct {
	Title   string   `json:"title"`
	RTT     float64  `json:"rtt_s"`
	Netns   bool     `json:"netns"`
	Runs    int      `json:"runs"`
	Links   []int64  `json:"links_bits_per_s"`
	Modes   []string `json:"modes"`
	Needed  int64    `json:"needed_bytes"`
	Rows    []row    `json:"rows"`
	Samples []sample `json:"samples"`
}

// rerender writes the report again from a saved JSON report.
func rerender(file, out string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	o := options{title: sv.Title, rtt: time.Duration(sv.RTT * float64(time.Second)), netns: sv.Netns, runs: sv.Runs,
		links: sv.Links, modes: sv.Modes, needed: sv.Needed, out: out}
	return report(o, sv.Samples)
}

// plot draws TTFR by link speed as grouped bars, one colour per mode, on a log scale.
func plot(o options, rs []row) string {
	const w, h, left, bottom, top = 720, 360, 60, 50, 30
	colours := map[string]string{"profiled": "#1b9e77", "unprofiled": "#7570b3", "download-first": "#d95f02", "peer": "#e7298a"}
	maxT := 0.0
	for _, r := range rs {
		maxT = max(maxT, r.TTFR.Max)
	}
	logMax := math.Max(0, math.Ceil(math.Log10(math.Max(maxT, 1))))
	y := func(t float64) float64 {
		frac := (math.Log10(max(t, 0.01)) + 2) / (logMax + 2) // axis from 0.01 s
		return float64(h-bottom) - frac*float64(h-bottom-top)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14">Time to first response by link speed (log scale; RTT %v)</text>`+"\n", left, o.rtt)
	for e := -2.0; e <= logMax; e++ {
		t := math.Pow(10, e)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%g s</text>`+"\n",
			left, w-10, y(t), y(t), left-5, y(t)+4, t)
	}
	groupW := float64(w-left-20) / float64(len(o.links))
	barW := groupW / float64(len(o.modes)+1)
	for gi, bits := range o.links {
		x0 := float64(left) + float64(gi)*groupW + barW/2
		for mi, mode := range o.modes {
			r, ok := find(rs, mode, bits/1e6)
			if !ok {
				continue
			}
			x := x0 + float64(mi)*barW
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %.2f s</title></rect>`+"\n",
				x, y(r.TTFR.Median), barW*0.9, float64(h-bottom)-y(r.TTFR.Median), colours[mode], mode, r.TTFR.Median)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d Mbit/s</text>`+"\n", x0+barW*float64(len(o.modes)-1)/2, h-bottom+18, bits/1e6)
	}
	for mi, mode := range o.modes {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left+mi*150, h-16, colours[mode], left+mi*150+16, h-6, mode)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
