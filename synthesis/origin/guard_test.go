package origin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/netguard"
)

// banner is what a hostile or internal upstream says about itself; secret is what a presigned
// URL carries in its query. Neither may reach an error.
const (
	banner = "BANNER-internal-db-7.3"
	secret = "SECRET-presigned-sig"
)

// TestOriginErrorsCarryNoUpstreamBytes: whatever the upstream answers, the error names the URL
// without its query and the status by its code and Go's text for it, never the upstream's own
// status text, headers or body.
func TestOriginErrorsCarryNoUpstreamBytes(t *testing.T) {
	probeOK := "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/100\r\nETag: \"v1\"\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
	tests := []struct {
		name   string
		answer func(r *http.Request) string
		read   bool   // the open succeeds; the failure comes with a range read
		want   string // in the error
	}{
		{"status text and body", func(*http.Request) string {
			return "HTTP/1.1 403 " + banner + "\r\nX-Server: " + banner + "\r\nContent-Length: 22\r\nConnection: close\r\n\r\n" + banner
		}, false, "403 Forbidden"},
		{"not HTTP at all", func(*http.Request) string { return "SSH-2.0-" + banner + "\r\n" }, false, "/overlay"},
		{"no range support", func(*http.Request) string {
			return "HTTP/1.1 200 " + banner + "\r\nContent-Length: 22\r\nConnection: close\r\n\r\n" + banner
		}, false, "200 OK"},
		{"bad content range", func(*http.Request) string {
			return "HTTP/1.1 206 " + banner + "\r\nContent-Range: bytes 0-0/" + banner + "\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
		}, false, "Content-Range"},
		{"server error, retried", func(*http.Request) string {
			return "HTTP/1.1 503 " + banner + "\r\nContent-Length: 22\r\nConnection: close\r\n\r\n" + banner
		}, false, "503 Service Unavailable"},
		{"range read: wrong range", func(r *http.Request) string {
			if r.Header.Get("Range") == "bytes=0-16383" {
				return probeOK
			}
			return "HTTP/1.1 206 " + banner + "\r\nContent-Range: bytes 77-" + banner + "\r\nETag: \"v1\"\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
		}, true, "Content-Range"},
		{"range read: status", func(r *http.Request) string {
			if r.Header.Get("Range") == "bytes=0-16383" {
				return probeOK
			}
			return "HTTP/1.1 200 " + banner + "\r\nContent-Length: 22\r\nConnection: close\r\n\r\n" + banner
		}, true, "200 OK"},
	}
	ctx := context.Background()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewRawServer(t, "127.0.0.1", tc.answer)
			u := s.URL("/overlay?X-Amz-Signature=" + secret)
			opts := HTTPOptions{RetryFor: 300 * time.Millisecond, AttemptTimeout: 5 * time.Second}
			o, err := Open(ctx, u, opts)
			if tc.read {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				if o.String() != s.URL("/overlay") {
					t.Errorf("origin named %q, want %q", o.String(), s.URL("/overlay"))
				}
				err = o.ReadAt(ctx, make([]byte, 10), 5)
				o.Close()
			}
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "BANNER") || strings.Contains(msg, secret) || strings.Contains(msg, "?") {
				t.Errorf("error carries upstream bytes or the query: %s", msg)
			}
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, s.URL("/overlay")) {
				t.Errorf("error %q: want it to name %q and the URL %s", msg, tc.want, s.URL("/overlay"))
			}
		})
	}
}

// TestOriginGuard: with a guard, an origin on a refused address is never connected to, after
// DNS and after each redirect; without one (the operator's own command line), it is read.
func TestOriginGuard(t *testing.T) {
	data := testData(64 << 10)
	origin := NewShapedServer(data)
	defer origin.Close()
	// 127.0.0.2 is loopback too; a listener there stands for another internal service.
	inner := NewRawServer(t, "127.0.0.2", func(*http.Request) string { return "HTTP/1.1 500 " + banner + "\r\n\r\n" })
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/to-inner":
			http.Redirect(w, r, inner.URL("/overlay"), http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/hops/"):
			// /hops/N redirects N times before reaching the origin.
			var n int
			fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/hops/"), "%d", &n)
			if n == 0 {
				http.Redirect(w, r, origin.URL(), http.StatusFound)
				return
			}
			http.Redirect(w, r, fmt.Sprintf("/hops/%d", n-1), http.StatusFound)
		}
	}))
	defer redirect.Close()
	_, port, _ := net.SplitHostPort(origin.Listener.Addr().String())
	only1, _ := netguard.ParsePrefixes([]string{"127.0.0.1/32"})
	all, _ := netguard.ParsePrefixes([]string{"127.0.0.0/8"})
	tests := []struct {
		name  string
		url   string
		guard *netguard.Guard
		want  error // nil: the overlay is read
	}{
		{"loopback refused", origin.URL(), netguard.New(), netguard.ErrRefused},
		{"a name resolving to loopback", "http://localhost:" + port + "/overlay", netguard.New(), netguard.ErrRefused},
		{"allowed range", origin.URL(), netguard.New(only1...), nil},
		{"redirect to a refused address", redirect.URL + "/to-inner", netguard.New(only1...), netguard.ErrRefused},
		{"five redirects", redirect.URL + "/hops/4", netguard.New(all...), nil},
		{"too many redirects", redirect.URL + "/hops/5", netguard.New(all...), errTooManyRedirects},
		{"too many redirects without a guard", redirect.URL + "/hops/5", nil, errTooManyRedirects},
		{"no guard: the operator's own tool", origin.URL(), nil, nil},
	}
	ctx := context.Background()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := inner.Requests.Load()
			start := time.Now()
			o, err := Open(ctx, tc.url, HTTPOptions{Guard: tc.guard})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer o.Close()
				if err := o.ReadAt(ctx, make([]byte, 1000), 100); err != nil {
					t.Fatalf("read: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refused after %v of retries: a refusal is final", d)
			}
			if n := inner.Requests.Load() - before; n != 0 {
				t.Errorf("the refused service got %d requests", n)
			}
		})
	}
}

// TestOriginGuardNeedsOwnClient: a guard cannot be combined with a caller's client, whose
// dialer it would not see.
func TestOriginGuardNeedsOwnClient(t *testing.T) {
	_, err := Open(context.Background(), "http://192.0.2.1/overlay", HTTPOptions{Guard: netguard.New(), Client: http.DefaultClient})
	if err == nil || !strings.Contains(err.Error(), "guard") {
		t.Fatalf("got %v, want an error about the guard", err)
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://s3.example.com/b/app.overlay?X-Amz-Signature=abc&X-Amz-Credential=k", "https://s3.example.com/b/app.overlay"},
		{"http://user:pass@example.com:8080/o#frag", "http://example.com:8080/o"},
		{"http://example.com/o?", "http://example.com/o"},
		{"http://example.com/a%20b", "http://example.com/a%20b"},
		{"http://exa mple.com/o?secret=1", "(an unparsable URL)"},
	}
	for _, tc := range tests {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestBadURLCarriesNoSecret: a URL that fails to parse is named without its query, whichever
// parser refuses it.
func TestBadURLCarriesNoSecret(t *testing.T) {
	for _, u := range []string{
		"http://h/p?X-Amz-Signature=SECRET#%zz", // url.Parse refuses it, ParseRequestURI does not
		"http://h/p%zz?X-Amz-Signature=SECRET",  // both refuse it
	} {
		_, err := NewHTTP(context.Background(), u, HTTPOptions{})
		if err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: error %v, want one without the query", u, err)
		}
	}
}
