package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
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

// row is one mode under one link setting, over its runs.
type row struct {
	Mode        string  `json:"mode"`
	LinkBits    int64   `json:"link_bits_per_s"`
	RTT         float64 `json:"rtt_s"`
	TTFR        stat    `json:"ttfr_s"`
	BytesBefore stat    `json:"bytes_before_first_answer"`
	Complete    stat    `json:"complete_s"`
	StallMemory stat    `json:"stall_memory_s"`
	StallDisk   stat    `json:"stall_disk_s"`
	// The overlay chunks touched before the first answer, and those not local then, by run.
	Touched []int64 `json:"overlay_touched"`
	Missed  []int64 `json:"overlay_missed"`
	Outside []int64 `json:"outside_profile"`
	PeakRSS stat    `json:"peak_rss_bytes"` // the cloudlet process alone
	CPU     stat    `json:"cpu_s"`
	Limit   float64 `json:"physical_limit_s"`
	// The breakdown, medians until the first answer.
	Index, Resume                                        float64
	Requests, RequestSec, DecodeSec, VerifySec, WriteSec float64
}

// limitTerms are what the physical limit of a run is made of (see limit).
type limitTerms struct {
	// Local is the median TTFR of the local mode (every chunk already there), 0 if it was not
	// measured: the guest's own time to answer on this machine.
	Local float64
	// Resume is what a resume costs when nothing has to come over the network first: the
	// fastest resume of any early-start or local run. (A run's own resume time can include
	// waiting for chunks QEMU reads while it resumes, which the limit counts as bytes already.)
	Resume float64
	// Needed is what a VM cannot answer without: the profiled overlay's header, index, device
	// state and working set, in bytes.
	Needed int64
}

func terms(o options, samples []sample) limitTerms {
	t := limitTerms{Needed: o.needed}
	best := math.Inf(1)
	var local []float64
	for _, s := range samples {
		switch s.Mode {
		case "local":
			local = append(local, s.TTFR)
			fallthrough
		case "profiled", "unprofiled":
			best = min(best, s.Resumed-s.Index)
		}
	}
	if !math.IsInf(best, 1) {
		t.Resume = best
	}
	t.Local = summarise(local).Median
	return t
}

// limit is the physical limit at a link's speed and RTT: the larger of the guest's own time to
// answer with everything local, and a resume plus the bytes needed at link speed plus one RTT.
func (t limitTerms) limit(bits int64, rtt float64) float64 {
	return max(t.Local, t.Resume+float64(t.Needed)*8/float64(bits)+rtt)
}

func rows(o options, samples []sample) []row {
	var out []row
	lt := terms(o, samples)
	for _, bits := range o.links {
		for _, rtt := range o.rtts {
			for _, mode := range o.modes {
				out = append(out, summariseRow(mode, bits, rtt.Seconds(), samples, lt))
			}
		}
	}
	return out
}

func summariseRow(mode string, bits int64, rtt float64, samples []sample, lt limitTerms) row {
	var ttfr, bytesB, comp, sm, sd, rss, cpu, idx, res, nreq, req, dec, ver, wr []float64
	r := row{Mode: mode, LinkBits: bits, RTT: rtt, Limit: lt.limit(bits, rtt)}
	for _, s := range samples {
		if s.Mode != mode || s.LinkBits != bits || !sameRTT(s.RTT, rtt) {
			continue
		}
		ttfr = append(ttfr, s.TTFR)
		bytesB = append(bytesB, float64(s.BytesBefore))
		comp = append(comp, s.Complete)
		sm = append(sm, s.StallMemory)
		sd = append(sd, s.StallDisk)
		rss = append(rss, float64(s.PeakRSS))
		cpu = append(cpu, s.CPU)
		r.Touched, r.Missed, r.Outside = append(r.Touched, s.Touched), append(r.Missed, s.Missed), append(r.Outside, s.Outside)
		idx = append(idx, s.Index)
		res = append(res, s.Resumed-s.Index)
		nreq = append(nreq, float64(s.Fetch.Requests))
		req = append(req, s.Fetch.RequestSec)
		dec = append(dec, s.Fetch.DecodeSec)
		ver = append(ver, s.Fetch.VerifySec)
		wr = append(wr, s.Fetch.WriteSec)
	}
	r.TTFR, r.BytesBefore, r.Complete = summarise(ttfr), summarise(bytesB), summarise(comp)
	r.StallMemory, r.StallDisk, r.PeakRSS, r.CPU = summarise(sm), summarise(sd), summarise(rss), summarise(cpu)
	r.Index, r.Resume, r.Requests = summarise(idx).Median, summarise(res).Median, summarise(nreq).Median
	r.RequestSec, r.DecodeSec = summarise(req).Median, summarise(dec).Median
	r.VerifySec, r.WriteSec = summarise(ver).Median, summarise(wr).Median
	return r
}

func find(rs []row, mode string, bits int64, rtt float64) (row, bool) {
	for _, r := range rs {
		if r.Mode == mode && r.LinkBits == bits && sameRTT(r.RTT, rtt) {
			return r, true
		}
	}
	return row{}, false
}

// sameRTT compares RTTs in seconds, which went through JSON and time.Duration.
func sameRTT(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

// The goals of the checks the report shows.
const (
	goalLimit     = 1.15 // profiled TTFR ÷ the physical limit, at most
	goalEager     = 1.05 // early start's TTFR ÷ download-first's, at most
	goalHeld      = 0.95 // of the overlay chunks touched before the answer, held by the profile
	goalRTTGrowth = 3.0  // profiled TTFR's growth over the RTT sweep, in RTTs, at most
)

// hitRates are the shares of the overlay chunks touched before the first answer that were
// local when first touched, and that the profile held (they were local, or in the working set
// on their way: the VM outran the link, not the profile), over all runs; 1 when none were
// touched. held is NaN for runs that did not count what the profile missed (a report from
// before the count, rendered again with -report): unknown, not 100 %.
func (r row) hitRates() (local, held float64) {
	var touched, missed, outside int64
	for i := range r.Touched {
		touched, missed = touched+r.Touched[i], missed+r.Missed[i]
	}
	for _, n := range r.Outside {
		outside += n
	}
	switch {
	case touched == 0:
		return 1, 1
	case len(r.Outside) != len(r.Touched):
		return float64(touched-missed) / float64(touched), math.NaN()
	}
	return float64(touched-missed) / float64(touched), float64(touched-outside) / float64(touched)
}

// growth is how a mode's TTFR changes from the lowest RTT to the highest at one link: seconds,
// and in units of the RTT's change. ok is false without two RTTs measured.
func growth(rs []row, mode string, bits int64, rtts []time.Duration) (secs, inRTTs float64, ok bool) {
	if len(rtts) < 2 {
		return 0, 0, false
	}
	lo, hi := slices.Min(rtts), slices.Max(rtts)
	a, okA := find(rs, mode, bits, lo.Seconds())
	b, okB := find(rs, mode, bits, hi.Seconds())
	if !okA || !okB || hi == lo {
		return 0, 0, false
	}
	secs = b.TTFR.Median - a.TTFR.Median
	return secs, secs / (hi - lo).Seconds(), true
}

// mbitLabel names a link speed: "38 Mbit/s", "1 Mbit/s", "500 kbit/s".
func mbitLabel(bits int64) string {
	if bits < 1e6 {
		return fmt.Sprintf("%g kbit/s", float64(bits)/1e3)
	}
	return fmt.Sprintf("%g Mbit/s", float64(bits)/1e6)
}
