package main

import (
	"fmt"
	"io"
)

// printDetail prints a table of every case and what the cache held of v2.
func printDetail(w io.Writer, ms measures) {
	fmt.Fprintln(w, "| case | overlay bytes | fetched | header, index, device state, digest table | fetched beyond them | from the chunk cache | fetch time |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for i, r := range ms.cases {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %.2f s |\n", caseNames[i], r.size, r.fetched, r.head,
			r.fetched-r.head, r.stats.FromStoreBytes, r.took.Seconds())
	}
	c := ms.cov
	fmt.Fprintf(w, "\nWith v1's chunks in the cache, it held %d of v2's %d stored chunks (%d of %d bytes raw); %d of v2's %d blobs had all their chunks there.\n",
		c.have, c.chunks, c.haveBytes, c.bytes, c.wholeBlobs, c.blobs)
}

// printHeader prints the header of the summary table whose rows printRow prints. Blobs
// fetched are the bytes fetched beyond the header, index, device state and digest table, which
// every fetch of v2 reads (their own column) and no cache can spare.
func printHeader(w io.Writer) {
	fmt.Fprintln(w, "| pair | v1 bytes | v2 bytes | v2 − v1 | v2 header, index, device state, digest table | v2, no cache: blobs fetched | v2 with v1 cached: blobs fetched | v2 a second time: blobs fetched | with v1 cached ÷ (v2 − v1) | v2 blobs wholly in v1 |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
}

// printRow prints the summary table's row for one pair of overlays.
func printRow(w io.Writer, label string, ms measures) {
	v1, v2 := ms.cases[caseV1].size, ms.cases[caseNoCache].size
	blobs := func(i int) int64 { return ms.cases[i].fetched - ms.cases[i].head }
	ratio := "–" // v2 no larger than v1: no change to divide by
	if v2 > v1 {
		ratio = fmt.Sprintf("%.2f", float64(blobs(caseWithV1))/float64(v2-v1))
	}
	fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d | %d | %s | %d of %d |\n", label, v1, v2, v2-v1,
		ms.cases[caseWithV1].head, blobs(caseNoCache), blobs(caseWithV1), blobs(caseAgain), ratio,
		ms.cov.wholeBlobs, ms.cov.blobs)
}
