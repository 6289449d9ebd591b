package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// banner is what a hostile or internal upstream says about itself; secret is what a presigned
// URL carries in its query. Neither may reach a client.
const (
	banner = "BANNER-internal-db-7.3"
	secret = "SECRET-presigned-sig"
)

const (
	tokenA = "token-of-a-aaaaaaaaaaaa"
	tokenB = "token-of-b-bbbbbbbbbbbb"
)

// authServer is the API with real sessions (their origins are refused or fail before any VM
// starts) on a loopback listener.
type authServer struct {
	url  string
	base *base.Base
	log  *syncBuffer
}

func newAuthServer(t *testing.T, tokens []string, allow ...string) *authServer {
	t.Helper()
	store, b := testStore(t)
	var prefixes []netip.Prefix
	for _, a := range allow {
		prefixes = append(prefixes, netip.MustParsePrefix(a))
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(ctx, ServerOptions{Store: store, ForwardHost: "127.0.0.1", Tokens: tokens, AllowOrigins: prefixes,
		Log: log.New(logs, "", 0), MaxSessions: 8})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		cancel()
		hs.CloseClientConnections()
		hs.Close()
		srv.Wait()
	})
	return &authServer{url: hs.URL, base: b, log: logs}
}

// do sends a request with the given Authorization header ("" for none).
func (a *authServer) do(t *testing.T, auth, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// create starts a session of url with token and returns its ID.
func (a *authServer) create(t *testing.T, token, url string) string {
	t.Helper()
	body, _ := json.Marshal(SessionRequest{Base: a.base.ID, URL: url})
	code, out := a.do(t, "Bearer "+token, "POST", "/v1/sessions", string(body))
	var st SessionStatus
	if code != http.StatusCreated || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("create: %d %s", code, out)
	}
	return st.ID
}

// ended waits until the session has left "running" and returns its status.
func (a *authServer) ended(t *testing.T, token, id string) SessionStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := a.do(t, "Bearer "+token, "GET", "/v1/sessions/"+id, "")
		var st SessionStatus
		if code != http.StatusOK || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("GET session %s: %d %s", id, code, out)
		}
		if st.State != "running" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s still running after 20 s: %+v", id, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServerNeedsToken: every endpoint answers 401 with a JSON error to a request without a
// valid token, on a loopback listener too (a guest reaches the host's loopback).
func TestServerNeedsToken(t *testing.T) {
	a := newAuthServer(t, []string{tokenA, tokenB})
	none := newAuthServer(t, nil)
	endpoints := []struct{ method, path, body string }{
		{"GET", "/v1/bases", ""},
		{"POST", "/v1/sessions", `{"base":"x","url":"http://example.com/o"}`},
		{"GET", "/v1/sessions", ""},
		{"GET", "/v1/sessions/0123456789abcdef", ""},
		{"GET", "/v1/sessions/0123456789abcdef/events", ""},
		{"DELETE", "/v1/sessions/0123456789abcdef", ""},
		{"GET", "/v2/unknown", ""},
	}
	refused := []struct {
		name string
		srv  *authServer
		auth string
	}{
		{"no header", a, ""},
		{"wrong token", a, "Bearer " + tokenA + "x"},
		{"a prefix of a token", a, "Bearer " + tokenA[:10]},
		{"empty bearer", a, "Bearer "},
		{"not bearer", a, "Basic " + tokenA},
		{"token without scheme", a, tokenA},
		{"server with no tokens", none, "Bearer " + tokenA},
	}
	for _, r := range refused {
		for _, e := range endpoints {
			code, body := r.srv.do(t, r.auth, e.method, e.path, e.body)
			if code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
				t.Errorf("%s: %s %s: got %d %s, want 401 with a JSON error", r.name, e.method, e.path, code, body)
			}
		}
	}
	for _, tok := range []string{tokenA, tokenB} {
		if code, body := a.do(t, "Bearer "+tok, "GET", "/v1/bases", ""); code != http.StatusOK || !strings.Contains(body, a.base.ID) {
			t.Errorf("GET /v1/bases with a valid token: %d %s", code, body)
		}
	}
}

// TestServerSessionsPerToken: a session belongs to the token that made it; another token's
// holder does not see it, cannot follow it, and cannot stop it.
func TestServerSessionsPerToken(t *testing.T) {
	a := newAuthServer(t, []string{tokenA, tokenB})
	// Port 9 on loopback is refused by the guard: the session fails at once, before any VM.
	idA := a.create(t, tokenA, "http://127.0.0.1:9/a.overlay")
	idB := a.create(t, tokenB, "http://127.0.0.1:9/b.overlay")
	a.ended(t, tokenA, idA)
	a.ended(t, tokenB, idB)
	for _, c := range []struct {
		token, own, other string
	}{{tokenA, idA, idB}, {tokenB, idB, idA}} {
		auth := "Bearer " + c.token
		code, list := a.do(t, auth, "GET", "/v1/sessions", "")
		if code != http.StatusOK || !strings.Contains(list, c.own) || strings.Contains(list, c.other) {
			t.Errorf("list: %d %s, want %s and not %s", code, list, c.own, c.other)
		}
		for _, e := range []struct{ method, path string }{
			{"GET", "/v1/sessions/" + c.other},
			{"GET", "/v1/sessions/" + c.other + "/events"},
			{"DELETE", "/v1/sessions/" + c.other},
		} {
			if code, body := a.do(t, auth, e.method, e.path, ""); code != http.StatusNotFound {
				t.Errorf("%s %s with another token: %d %s, want 404", e.method, e.path, code, body)
			}
		}
	}
	// The other token's DELETE left it in place; its own token stops it.
	if code, body := a.do(t, "Bearer "+tokenA, "DELETE", "/v1/sessions/"+idA, ""); code != http.StatusNoContent {
		t.Errorf("DELETE own session: %d %s", code, body)
	}
	if code, _ := a.do(t, "Bearer "+tokenB, "GET", "/v1/sessions/"+idB, ""); code != http.StatusOK {
		t.Errorf("B's session is gone after A's delete: %d", code)
	}
}

// TestServerRefusesPrivateOrigins: a URL whose address is not public fails its session with
// no request made to it, after DNS and after redirects, unless the operator allowed its range.
func TestServerRefusesPrivateOrigins(t *testing.T) {
	data := testData(64 << 10)
	src := origin.NewShapedServer(data)
	defer src.Close()
	// inner stands for a service on the host's loopback; 127.0.0.2 is loopback too.
	inner := origin.NewRawServer(t, "127.0.0.2", func(*http.Request) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n" + "secret"
	})
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, inner.URL("/admin"), http.StatusFound)
	}))
	defer redirect.Close()
	strict := newAuthServer(t, []string{tokenA})
	only1 := newAuthServer(t, []string{tokenA}, "127.0.0.1/32")
	_, port, _ := net.SplitHostPort(src.Listener.Addr().String())
	tests := []struct {
		name string
		srv  *authServer
		url  string
	}{
		{"loopback", strict, src.URL()},
		{"a name for loopback", strict, "http://localhost:" + port + "/overlay"},
		{"IPv6 loopback", strict, "http://[::1]:9/o"},
		{"IPv4-mapped loopback", strict, "http://[::ffff:127.0.0.1]:" + port + "/overlay"},
		{"private", strict, "http://10.255.255.1/o"},
		{"cloud metadata", strict, "http://169.254.169.254/latest/meta-data/"},
		{"CGNAT", strict, "http://100.64.0.1/o"},
		{"redirect to loopback", only1, redirect.URL + "/o"},
		{"registry on loopback", strict, "oci://127.0.0.1:" + port + "/apps/x:v1"},
		{"registry on a private address", strict, "oci://10.255.255.1/apps/x@sha256:" + strings.Repeat("0", 64)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := src.Requests.Load() + inner.Requests.Load()
			st := tc.srv.ended(t, tokenA, tc.srv.create(t, tokenA, tc.url))
			if st.State != "failed" || !strings.Contains(st.Error, "refused") {
				t.Errorf("got %s %q, want failed as refused", st.State, st.Error)
			}
			for _, e := range st.Timeline {
				t.Errorf("event %s: the session went further than its origin", e.Name)
			}
			if n := src.Requests.Load() + inner.Requests.Load() - before; n != 0 {
				t.Errorf("the refused services got %d requests", n)
			}
		})
	}
	// Allowed by the operator, the loopback origin is read (and the overlay, random bytes,
	// found corrupt: still no VM).
	allowed := newAuthServer(t, []string{tokenA}, "127.0.0.0/8")
	before := src.Requests.Load()
	st := allowed.ended(t, tokenA, allowed.create(t, tokenA, src.URL()))
	if src.Requests.Load() == before || strings.Contains(st.Error, "refused") {
		t.Errorf("an allowed origin: %d requests, %s %q", src.Requests.Load()-before, st.State, st.Error)
	}
}

// TestServerErrorsCarryNoUpstreamBytes: a session whose origin answers with a banner in its
// status line, headers and body, behind a URL with a secret in its query, fails with an error
// that holds neither, in every answer of the API and in the server's log.
func TestServerErrorsCarryNoUpstreamBytes(t *testing.T) {
	upstream := origin.NewRawServer(t, "127.0.0.1", func(*http.Request) string {
		return "HTTP/1.1 403 " + banner + "\r\nServer: " + banner + "\r\nContent-Length: 22\r\nConnection: close\r\n\r\n" + banner
	})
	a := newAuthServer(t, []string{tokenA}, "127.0.0.0/8")
	id := a.create(t, tokenA, upstream.URL("/app.overlay?X-Amz-Signature="+secret))
	st := a.ended(t, tokenA, id)
	if st.State != "failed" || !strings.Contains(st.Error, "403 Forbidden") || !strings.Contains(st.Error, upstream.URL("/app.overlay")) {
		t.Errorf("session: %s %q, want failed naming 403 Forbidden and the URL without its query", st.State, st.Error)
	}
	var seen bytes.Buffer
	for _, path := range []string{"/v1/sessions/" + id, "/v1/sessions", "/v1/sessions/" + id + "/events"} {
		_, body := a.do(t, "Bearer "+tokenA, "GET", path, "")
		seen.WriteString(body)
	}
	seen.WriteString(a.log.String())
	for _, leak := range []string{"BANNER", secret} {
		if strings.Contains(seen.String(), leak) {
			t.Errorf("%q reached the API's answers or log:\n%s", leak, seen.String())
		}
	}
}
