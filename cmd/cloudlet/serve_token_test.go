package main

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
)

// commitTinyBase puts a small synthetic base into the store at home (no QEMU needed): enough
// for the server to accept a session, which then fails before any VM starts.
func commitTinyBase(t *testing.T, home string) string {
	t.Helper()
	return base.CommitTiny(t, mustStore(t, home), "tiny").ID
}

// apiGet sends a GET to the server with the token of home's server, or none if home is "".
func apiGet(t *testing.T, home, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if home != "" {
		req.Header.Set("Authorization", "Bearer "+serverToken(t, home))
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// serverToken is the token 'serve' made under home.
func serverToken(t *testing.T, home string) string {
	t.Helper()
	return strings.TrimSpace(string(mustRead(t, filepath.Join(home, "token"))))
}

// TestServeTokenByDefault: 'serve' without --token-file makes a private token under --home,
// keeps it across restarts and says where it is; 'client' on the same home uses it; without
// it the API answers 401, loopback or not; an origin on loopback is refused unless allowed.
func TestServeTokenByDefault(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	id := commitTinyBase(t, home)
	addr, serr := startServe(t, home)

	path := filepath.Join(home, "token")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no token file after serve: %v\n%s", err, serr.String())
	}
	tok := serverToken(t, home)
	if fi.Mode().Perm() != 0o600 || len(tok) != 64 {
		t.Errorf("token file: mode %o, %d characters, want 0600 and 64", fi.Mode().Perm(), len(tok))
	}
	if _, err := hex.DecodeString(tok); err != nil {
		t.Errorf("token %q is not hex", tok)
	}
	if !eventually(func() bool { return strings.Contains(serr.String(), path) }) {
		t.Errorf("serve does not say where its token is:\n%s", serr.String())
	}

	if code, body := apiGet(t, "", "http://"+addr+"/v1/bases"); code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
		t.Errorf("GET /v1/bases without a token: %d %s, want 401", code, body)
	}
	if code, body := apiGet(t, home, "http://"+addr+"/v1/bases"); code != http.StatusOK || !strings.Contains(body, id) {
		t.Errorf("GET /v1/bases with the token: %d %s", code, body)
	}
	// The client finds the token by itself (a 404: it got past the token check).
	if r := run(t, ctx, home, "client", "-s", addr, "--stop", "0123456789abcdef"); r.code == 0 || !strings.Contains(r.stderr, "404") {
		t.Errorf("client --stop with the home's token: exit %d, %s, want a 404", r.code, r.stderr)
	}
	if r := run(t, ctx, t.TempDir(), "client", "-s", addr, "--stop", "0123456789abcdef"); r.code == 0 || !strings.Contains(r.stderr, "401") || !strings.Contains(r.stderr, "--token-file") {
		t.Errorf("client --stop from another home: exit %d, %s, want a 401 and a hint", r.code, r.stderr)
	}
	// A URL on loopback is refused before any VM starts.
	r := run(t, ctx, home, "client", "-s", addr, "--base", id[:12], "-u", "http://127.0.0.1:9/app.overlay?sig=hush")
	if r.code == 0 || !strings.Contains(r.stderr, "refused") || strings.Contains(r.stdout+r.stderr, "hush") {
		t.Errorf("client -u on loopback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// A second server on the same home keeps the token.
	_, serr2 := startServe(t, home)
	if got := serverToken(t, home); got != tok {
		t.Errorf("the token changed across a restart: %q, want %q", got, tok)
	}
	if !eventually(func() bool { return strings.Contains(serr2.String(), path) }) {
		t.Errorf("the second serve does not say where its token is:\n%s", serr2.String())
	}
}

// eventually polls cond for a few seconds: what a child printed on stderr reaches the test's
// buffer through a goroutine of its own, after the line on stdout that startServe waited for.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestServeTokenFile: --token-file may hold several tokens; a client with any of them gets in,
// and 'serve' refuses a file with no token or an unsafe default token file.
func TestServeTokenFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("# team a\n0123456789abcdef-a\n\n# team b\n0123456789abcdef-b\n"), 0o600)
	second := filepath.Join(dir, "b")
	os.WriteFile(second, []byte("0123456789abcdef-b\n"), 0o600)
	home := t.TempDir()
	addr, _ := startServe(t, home, "--token-file", tokens)
	if _, err := os.Stat(filepath.Join(home, "token")); err == nil {
		t.Error("serve with --token-file made a token file under home too")
	}
	if r := run(t, ctx, home, "client", "-s", addr, "--token-file", second, "--stop", "0123456789abcdef"); !strings.Contains(r.stderr, "404") {
		t.Errorf("client with the file's second token: exit %d, %s, want a 404", r.code, r.stderr)
	}

	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing\n\n"), 0o600)
	open := t.TempDir()
	os.WriteFile(filepath.Join(open, "token"), []byte("0123456789abcdef0123\n"), 0o644)
	for _, c := range []struct {
		name, home string
		args       []string
		want       string
	}{
		{"no token in the file", t.TempDir(), []string{"--token-file", empty}, "no token"},
		{"missing file", t.TempDir(), []string{"--token-file", filepath.Join(dir, "nope")}, "no such file"},
		{"default file readable by others", open, nil, "0600"},
		{"bad origin range", t.TempDir(), []string{"--allow-origin", "10.0.0.0/99"}, "--allow-origin"},
	} {
		r := run(t, ctx, c.home, append([]string{"serve", "--listen", "127.0.0.1:0"}, c.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, %s, want an error about %q", c.name, r.code, r.stderr, c.want)
		}
	}
}
