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
	"syscall"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
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
	var rate int64
	if *bw != "0" {
		rate, err = synthesis.ParseRate(*bw)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(2)
	}
	s := origin.NewShapedServer(data)
	defer s.Close()
	s.Shape(*rtt, rate)
	fmt.Println(s.URL())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "origin: served %d requests, %d bytes\n", s.Requests.Load(), s.Bytes.Load())
}
