// Command origin serves one overlay file over HTTP with range requests, through an emulated
// link: a delay per request (one RTT) and a bandwidth cap. Benchmarks and the demo use it as
// the remote origin a cloudlet synthesises from.
//
//	go run ./bench/origin -file app.overlay -rtt 20ms -bandwidth 38Mbit
//
// It prints the overlay's URL on its first line and serves until SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
)

func main() {
	file := flag.String("file", "", "overlay file to serve")
	rtt := flag.Duration("rtt", 20*time.Millisecond, "delay added to each request")
	bw := flag.String("bandwidth", "38Mbit", "link rate (Mbit or MB per second), 0 for none")
	flag.Parse()
	data, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
	rate, err := bitsOrBytes(*bw)
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(2)
	}
	s := synthesis.NewShapedServer(data)
	defer s.Close()
	s.Shape(*rtt, rate)
	fmt.Println(s.URL())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "origin: served %d requests, %d bytes\n", s.Requests.Load(), s.Bytes.Load())
}

// bitsOrBytes reads "38Mbit" (bits) or "5MB" (bytes) per second as bytes per second.
func bitsOrBytes(s string) (int64, error) {
	t := strings.ToLower(s)
	mult := 1.0
	switch {
	case strings.HasSuffix(t, "mbit"):
		t, mult = strings.TrimSuffix(t, "mbit"), 1e6/8
	case strings.HasSuffix(t, "kbit"):
		t, mult = strings.TrimSuffix(t, "kbit"), 1e3/8
	case strings.HasSuffix(t, "mb"):
		t, mult = strings.TrimSuffix(t, "mb"), 1e6
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bandwidth %q: want e.g. 38Mbit or 5MB", s)
	}
	return int64(v * mult), nil
}
