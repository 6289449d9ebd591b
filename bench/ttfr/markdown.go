package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// report writes the Markdown report, the JSON report and the plot to o.out.{md,json,svg}, and
// prints the Markdown.
func report(o options, samples []sample) error {
	rs := rows(o, samples)
	md := markdown(o, rs, terms(o, samples))
	fmt.Print(md)
	if err := os.WriteFile(o.out+".md", []byte(md), 0o644); err != nil {
		return err
	}
	rtts := make([]float64, len(o.rtts))
	for i, d := range o.rtts {
		rtts[i] = d.Seconds()
	}
	j, _ := json.MarshalIndent(saved{Title: o.title, RTTs: rtts, Netns: o.netns, Runs: o.runs, Links: o.links,
		Modes: o.modes, Needed: o.needed, OverlayBytes: o.overlayBytes, Path: o.path, Rows: rs, Samples: samples}, "", "  ")
	if err := os.WriteFile(o.out+".json", j, 0o644); err != nil {
		return err
	}
	return os.WriteFile(o.out+".svg", []byte(plot(o, rs)), 0o644)
}

func markdown(o options, rs []row, lt limitTerms) string {
	var md strings.Builder
	if o.title != "" {
		fmt.Fprintf(&md, "%s\n\n", o.title)
	}
	intro(&md, o, lt)
	mainTable(&md, o, rs)
	checksTable(&md, o, rs)
	overallHits(&md, rs)
	sweepTable(&md, o, rs)
	breakdownTable(&md, o, rs)
	return md.String()
}

func intro(md *strings.Builder, o options, lt limitTerms) {
	linkKind := "userspace shaping on loopback (one token bucket, RTT added per request)"
	if o.netns {
		linkKind = "kernel shaping: origin in a network namespace behind a veth pair (tc)"
	}
	fmt.Fprintf(md, "Link: %s; RTT %s; %d runs per mode and link, interleaved. ", linkKind, rttList(o), o.runs)
	share := ""
	if o.overlayBytes > 0 {
		share = fmt.Sprintf(", %.0f %% of the %.2f MB profiled overlay", 100*float64(o.needed)/float64(o.overlayBytes), float64(o.overlayBytes)/1e6)
	}
	fmt.Fprintf(md, "A VM cannot answer without %.2f MB (header, index, device state and working set%s).\n\n", float64(o.needed)/1e6, share)
	fmt.Fprintf(md, "The physical limit of a run is the larger of (a) the guest's own time to answer on this machine: ")
	if slices.Contains(o.modes, "local") {
		fmt.Fprintf(md, "the median TTFR of the local mode, %.2f s (the profiled overlay over a complete cache that the "+
			"run reuses, read from its file: no byte crosses the link), ", lt.Local)
	} else {
		fmt.Fprintf(md, "not measured in this run (no local mode), so the limit is (b) alone, ")
	}
	fmt.Fprintf(md, "and (b) the resume (%.2f s, the fastest early-start or local resume) plus those %.2f MB at link speed "+
		"plus one RTT. Misses: of the overlay's chunks the guest touched before its first answer, those not local when "+
		"first touched, per run. Peak RSS and CPU (user + system) are the cloudlet process's own, without QEMU's.\n\n",
		lt.Resume, float64(lt.Needed)/1e6)
}

// label names a link setting; the RTT only when the run has several.
func label(o options, bits int64, rtt float64) string {
	if len(o.rtts) > 1 {
		return fmt.Sprintf("%s, RTT %s", mbitLabel(bits), msLabel(rtt))
	}
	return mbitLabel(bits)
}

// msLabel renders an RTT in seconds as "20 ms".
func msLabel(secs float64) string { return fmt.Sprintf("%g ms", math.Round(secs*1e6)/1e3) }

// misses renders a row's misses per run, with those outside the profile: "0/617 (0) 2/617 (1)".
func misses(r row) string {
	cells := make([]string, len(r.Missed))
	for i := range r.Missed {
		cells[i] = fmt.Sprintf("%d/%d", r.Missed[i], r.Touched[i])
		if i < len(r.Outside) {
			cells[i] += fmt.Sprintf(" (%d)", r.Outside[i])
		}
	}
	return strings.Join(cells, " ")
}

func mainTable(md *strings.Builder, o options, rs []row) {
	fmt.Fprintf(md, "| link | mode | TTFR s, median (min–max) | MB before first answer | complete s | stall memory s | stall disk s "+
		"| misses per run: missed/touched (outside the profile) | peak RSS MB | CPU s | physical limit s |\n")
	fmt.Fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		complete := fmt.Sprintf("%.2f", r.Complete.Median)
		miss, rss, cpu := misses(r), fmt.Sprintf("%.0f", r.PeakRSS.Median/1e6), fmt.Sprintf("%.2f", r.CPU.Median)
		if r.Mode == "peer" {
			complete += " (RAM; disk lazy)"
			miss, rss, cpu = "–", "–", "–"
		}
		fmt.Fprintf(md, "| %s | %s | %s | %.1f | %s | %.2f | %.2f | %s | %s | %s | %.2f |\n", label(o, r.LinkBits, r.RTT), r.Mode, r.TTFR,
			r.BytesBefore.Median/1e6, complete, r.StallMemory.Median, r.StallDisk.Median, miss, rss, cpu, r.Limit)
	}
}

// mark renders a ratio with whether it meets its goal.
func mark(v float64, ok bool) string {
	if ok {
		return fmt.Sprintf("%.2f ✓", v)
	}
	return fmt.Sprintf("%.2f ✗", v)
}

// percentMark renders a share of chunks the profile held, with whether it meets its goal.
func percentMark(held float64) string {
	if math.IsNaN(held) {
		return "–"
	}
	return strings.Replace(mark(100*held, held >= goalHeld), " ", " % ", 1)
}

func checksTable(md *strings.Builder, o options, rs []row) {
	fmt.Fprintf(md, "\nThe checks (medians; ✓ goal met, ✗ missed):\n\n")
	fmt.Fprintf(md, "| link | profiled ÷ limit (goal ≤ %.2f) | unprofiled ÷ download-first (goal ≤ %.2f) | profiled ÷ download-first "+
		"(goal ≤ %.2f) | download-first ÷ profiled | peer ÷ profiled | profiled: misses per run | profiled: chunks local when "+
		"touched | profiled: chunks the profile held (goal ≥ %.0f %%) |\n", goalLimit, goalEager, goalEager, 100*goalHeld)
	fmt.Fprintf(md, "|---|---|---|---|---|---|---|---|---|\n")
	for _, bits := range o.links {
		for _, d := range o.rtts {
			rtt := d.Seconds()
			p, ok := find(rs, "profiled", bits, rtt)
			if !ok {
				continue
			}
			df, hasDF := find(rs, "download-first", bits, rtt)
			over := func(a, b row, okB bool, goal float64) string {
				if !okB {
					return "–"
				}
				v := a.TTFR.Median / b.TTFR.Median
				if goal == 0 {
					return fmt.Sprintf("%.1f", v)
				}
				return mark(v, v <= goal)
			}
			unprofiled := "–"
			if u, ok := find(rs, "unprofiled", bits, rtt); ok {
				unprofiled = over(u, df, hasDF, goalEager)
			}
			peer := "–"
			if pr, ok := find(rs, "peer", bits, rtt); ok {
				peer = over(pr, p, true, 0)
			}
			local, held := p.hitRates()
			fmt.Fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %.2f %% | %s |\n", label(o, bits, rtt),
				mark(p.TTFR.Median/p.Limit, p.TTFR.Median/p.Limit <= goalLimit), unprofiled, over(p, df, hasDF, goalEager),
				over(df, p, hasDF, 0), peer, misses(p), 100*local, percentMark(held))
		}
	}
}

// overallHits says, over every profiled run of the report, how many of the overlay chunks
// touched before the first answer the profile held, and how many were local when first touched.
func overallHits(md *strings.Builder, rs []row) {
	all := row{}
	for _, r := range rs {
		if r.Mode == "profiled" {
			all.Touched, all.Missed = append(all.Touched, r.Touched...), append(all.Missed, r.Missed...)
			all.Outside = append(all.Outside, r.Outside...)
		}
	}
	if len(all.Touched) == 0 {
		return
	}
	local, held := all.hitRates()
	fmt.Fprintf(md, "\nOver all %d profiled syntheses, the profile held %s of the overlay chunks touched before the first "+
		"answer (goal ≥ %.0f %%): they were local when first touched, or in the working set on their way; %.2f %% were "+
		"local when first touched.\n", len(all.Touched), percentMark(held), 100*goalHeld, 100*local)
}

func sweepTable(md *strings.Builder, o options, rs []row) {
	if len(o.rtts) < 2 {
		return
	}
	rtts := slices.Clone(o.rtts)
	slices.Sort(rtts)
	fmt.Fprintf(md, "\nThe RTT sweep: TTFR medians (s) by RTT, and how much they grow from %s to %s, in seconds and in "+
		"RTTs (goal for profiled: at most %.0f RTTs):\n\n| link | mode |", msLabel(rtts[0].Seconds()), msLabel(rtts[len(rtts)-1].Seconds()), goalRTTGrowth)
	for _, d := range rtts {
		fmt.Fprintf(md, " RTT %s |", msLabel(d.Seconds()))
	}
	fmt.Fprintf(md, " growth s | growth in RTTs |\n|---|---|%s---|---|\n", strings.Repeat("---|", len(rtts)))
	for _, bits := range o.links {
		for _, mode := range o.modes {
			if mode == "local" { // nothing crosses the link
				continue
			}
			fmt.Fprintf(md, "| %s | %s |", mbitLabel(bits), mode)
			for _, d := range rtts {
				r, _ := find(rs, mode, bits, d.Seconds())
				fmt.Fprintf(md, " %.2f |", r.TTFR.Median)
			}
			secs, inRTTs, _ := growth(rs, mode, bits, o.rtts)
			g := fmt.Sprintf("%.1f", inRTTs)
			if mode == "profiled" {
				g = mark(inRTTs, inRTTs <= goalRTTGrowth)
			}
			fmt.Fprintf(md, " %.2f | %s |\n", secs, g)
		}
	}
}

func breakdownTable(md *strings.Builder, o options, rs []row) {
	fmt.Fprintf(md, "\nWhere the time goes until the first answer (medians; fetcher times are summed over its workers):\n\n")
	fmt.Fprintf(md, "| link | mode | index s | resume s | stall memory s | stall disk s | range requests | waiting on them s | decode s | chunk digests s | cache writes s |\n")
	fmt.Fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		l := label(o, r.LinkBits, r.RTT)
		if r.Mode == "peer" {
			fmt.Fprintf(md, "| %s | peer | – | %.2f (whole RAM stream) | – | – | – | – | – | – | – |\n", l, r.Resume)
			continue
		}
		fmt.Fprintf(md, "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.0f | %.2f | %.3f | %.3f | %.3f |\n", l, r.Mode,
			r.Index, r.Resume, r.StallMemory.Median, r.StallDisk.Median, r.Requests, r.RequestSec, r.DecodeSec, r.VerifySec, r.WriteSec)
	}
}

// saved is the JSON report; -report renders it again (after a change to the report itself).
type saved struct {
	Title        string    `json:"title"`
	RTT          float64   `json:"rtt_s,omitempty"` // reports before the RTT sweep: their one RTT
	RTTs         []float64 `json:"rtts_s"`
	Netns        bool      `json:"netns"`
	Runs         int       `json:"runs"`
	Links        []int64   `json:"links_bits_per_s"`
	Modes        []string  `json:"modes"`
	Needed       int64     `json:"needed_bytes"`
	OverlayBytes int64     `json:"overlay_bytes"`
	Path         string    `json:"probe_path"`
	Rows         []row     `json:"rows"`
	Samples      []sample  `json:"samples"`
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
	if len(sv.RTTs) == 0 { // an older report: one RTT, not in its samples
		sv.RTTs = []float64{sv.RTT}
		for i := range sv.Samples {
			sv.Samples[i].RTT = sv.RTT
		}
	}
	o := options{title: sv.Title, netns: sv.Netns, runs: sv.Runs, links: sv.Links, modes: sv.Modes,
		needed: sv.Needed, overlayBytes: sv.OverlayBytes, path: sv.Path, out: out}
	for _, r := range sv.RTTs {
		o.rtts = append(o.rtts, time.Duration(r*float64(time.Second)))
	}
	return report(o, sv.Samples)
}
