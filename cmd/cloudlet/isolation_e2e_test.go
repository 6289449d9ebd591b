package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// testIsolation synthesises the app through 'cloudlet serve' and asks the running guest (its
// reach CGI) to connect to the server's API and to a service on host loopback: both must fail,
// while the same probe reaches the guest's own web server.
func testIsolation(t *testing.T, ctx context.Context, home, id, file string) {
	t.Cleanup(func() { noQEMULeft(t, home) }) // after the server's own cleanup
	addr, serr := startServe(t, home, "--max-sessions", "1")
	secret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "host-secret") }))
	defer secret.Close()

	r := run(t, ctx, home, "client", "-s", addr, "--base", id[:12], "-o", file, "--port", "80", "--probe", "8080/")
	if r.code != 0 || !strings.Contains(r.stdout, "first_answer") {
		t.Fatalf("client: exit %d\n%s\n%s\nserver: %s", r.code, r.stdout, r.stderr, serr.String())
	}
	sid := strings.Fields(r.stdout)[1]
	defer run(t, ctx, home, "client", "-s", addr, "--stop", sid)
	fwd := forwardOf(t, r.stdout, 80)

	_, apiPort, _ := net.SplitHostPort(addr)
	_, secretPort, _ := net.SplitHostPort(strings.TrimPrefix(secret.URL, "http://"))
	for _, c := range []struct{ target, want string }{
		{"127.0.0.1:80", "reached"}, // the probe works: the guest reaches its own web server
		{"10.0.2.2:" + apiPort, "unreachable"},
		{"10.0.2.2:" + secretPort, "unreachable"},
	} {
		body := waitBody(t, ctx, "http://"+fwd+"/cgi-bin/reach?"+c.target)
		if got := strings.TrimSpace(body); got != c.want+" "+c.target {
			t.Errorf("the guest asked to reach %s: %q, want %q", c.target, got, c.want)
		}
	}
}

// forwardOf reads the host address of a forwarded guest port from the client's output.
func forwardOf(t *testing.T, stdout string, port int) string {
	t.Helper()
	prefix := fmt.Sprintf("guest port %d is at ", port)
	for _, l := range strings.Split(stdout, "\n") {
		if a, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(a)
		}
	}
	t.Fatalf("no forward of guest port %d in:\n%s", port, stdout)
	return ""
}
