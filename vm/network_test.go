package vm_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

// TestGuestNetwork: a guest is hostile. Through QEMU's user networking it would reach the
// host's loopback services at 10.0.2.2, and any host address. By default it reaches neither;
// with NetworkInternet it reaches the world (here: a host address stands for it) but never the
// host's loopback. The forwards into it work in both modes.
func TestGuestNetwork(t *testing.T) {
	// Two services: one on host loopback only, one on every host address. Each counts the
	// connections it accepts.
	loop := listenCounting(t, "127.0.0.1:0")
	all := listenCounting(t, "0.0.0.0:0")
	hostIP := nonLoopbackIPv4(t)
	targets := []struct {
		name, addr string
		l          *countingListener
		internet   bool // reached with NetworkInternet
	}{
		{"host loopback through 10.0.2.2", fmt.Sprintf("10.0.2.2:%d", loop.port), loop, false},
		{"all-address service through 10.0.2.2", fmt.Sprintf("10.0.2.2:%d", all.port), all, false},
		{"host address " + hostIP, fmt.Sprintf("%s:%d", hostIP, all.port), all, true},
	}
	for _, mode := range []vm.Network{vm.NetworkNone, vm.NetworkInternet} {
		t.Run(string(mode), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			port := testguest.FreePort(t)
			opts := guestOptions(t, port)
			opts.Network = mode
			v, err := vm.Boot(ctx, opts)
			if err != nil {
				t.Fatalf("boot: %v", err)
			}
			t.Cleanup(v.Kill)
			if err := v.Console().WaitFor(ctx, "cloudlet-guest: ready"); err != nil {
				t.Fatal(err)
			}
			waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port)) // the forward into the guest works
			// The probe itself works: the guest reaches its own web server with it.
			if out, status, err := v.Console().Run(ctx, fetchCmd("127.0.0.1:80")); err != nil || status != 0 || !strings.Contains(out, "200 OK") {
				t.Fatalf("the guest cannot fetch its own page: status %d, %v, %q", status, err, out)
			}
			for _, tc := range targets {
				before := tc.l.accepted.Load()
				out, status, err := v.Console().Run(ctx, fetchCmd(tc.addr))
				if err != nil {
					t.Fatal(err)
				}
				reached := status == 0 && strings.Contains(out, "host-secret")
				t.Logf("%s: status %d, output %q", tc.addr, status, out)
				if want := mode == vm.NetworkInternet && tc.internet; reached != want || (tc.l.accepted.Load() != before) != want {
					t.Errorf("%s (%s): reached %v with %d connections, want reached %v", tc.name, tc.addr, reached, tc.l.accepted.Load()-before, want)
				}
			}
		})
	}
}

// fetchCmd is a guest shell command that sends an HTTP request to addr and prints the answer;
// it fails when no connection is made.
func fetchCmd(addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %s 2>&1`, host, port)
}

type countingListener struct {
	port     int
	accepted atomic.Int64
}

// listenCounting serves "host-secret" on addr until the test ends.
func listenCounting(t *testing.T, addr string) *countingListener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &countingListener{port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "host-secret") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				c.accepted.Add(1)
			}
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return c
}

// nonLoopbackIPv4 is an address of this host that is not loopback.
func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	t.Fatal("this host has no IPv4 address but loopback")
	return ""
}
