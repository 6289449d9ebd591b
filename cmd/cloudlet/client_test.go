package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer answers 'cloudlet client' as a synthesis server might: create with the given
// code and body, and an event stream that ends the session at once. It records the bearer
// tokens it was sent.
func fakeServer(t *testing.T, code int, body string) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/events") {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "event: timeline\ndata: {\"event\":\"first_answer\"}\n\nevent: timeline\ndata: {\"event\":\"complete\"}\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string{}, auth...) }
}

// runInProcess runs the cloudlet command line in this process, as main does, with home as
// --home.
func runInProcess(t *testing.T, home string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	app := newApp(strings.NewReader(""), &out, &errOut)
	err = app.RunContext(ctx, interspersed(app, append([]string{"cloudlet", "--home", home}, args...)))
	return out.String(), errOut.String(), err
}

// TestClientOddAnswers: a server's answer is not trusted to have the shape the client
// expects. A short or missing base, a missing forward or a strange ID gives an error or is
// printed as it is, never a panic.
func TestClientOddAnswers(t *testing.T) {
	tests := []struct {
		name    string
		code    int
		body    string
		wantOut string // in stdout, when the client succeeds
		wantErr string // in the error, when it fails
	}{
		{"full answer", 201, `{"id":"s1","base":"0123456789abcdef0123","forwards":{"8080":"127.0.0.1:4000"}}`, "on base 0123456789ab", ""},
		{"short base", 201, `{"id":"s1","base":"ab","forwards":{"8080":"127.0.0.1:4000"}}`, "on base ab\n", ""},
		{"no base", 201, `{"id":"s1","forwards":{"8080":"127.0.0.1:4000"}}`, "", "no base"},
		{"no forwards", 201, `{"id":"s1","base":"0123456789abcdef"}`, "", "guest port 8080"},
		{"forwards null", 201, `{"id":"s1","base":"0123456789abcdef","forwards":null}`, "", "guest port 8080"},
		{"no id", 201, `{"base":"0123456789abcdef","forwards":{"8080":"127.0.0.1:4000"}}`, "", "session ID"},
		{"id with a path", 201, `{"id":"../../v1/bases","base":"0123456789abcdef","forwards":{"8080":"127.0.0.1:4000"}}`, "", "session ID"},
		{"not JSON", 201, `<html>hello</html>`, "", "answer"},
		{"empty body", 201, ``, "", "answer"},
		{"error without JSON", 500, `oops`, "", "500"},
	}
	home := t.TempDir()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := fakeServer(t, tc.code, tc.body)
			stdout, stderr, err := runInProcess(t, home, "client", "-s", srv.URL, "--base", "b", "-u", "http://example.com/o", "--probe", "8080/")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one about %q\n%s%s", err, tc.wantErr, stdout, stderr)
				}
				return
			}
			if err != nil || !strings.Contains(stdout, tc.wantOut) {
				t.Fatalf("got %v, stdout %q, want %q in it", err, stdout, tc.wantOut)
			}
		})
	}
}

// TestClientToken: the client sends the first token of --token-file, or else the one 'serve'
// keeps in HOME/token, or none if there is none.
func TestClientToken(t *testing.T) {
	const tokA, tokB = "aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb"
	withToken := t.TempDir()
	if err := os.WriteFile(filepath.Join(withToken, "token"), []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("# ours\n\n"+tokB+"\n"+tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		home string
		args []string
		want string
	}{
		{"home token", withToken, nil, "Bearer " + tokA},
		{"token file over home", withToken, []string{"--token-file", file}, "Bearer " + tokB},
		{"no token anywhere", t.TempDir(), nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, auth := fakeServer(t, 204, "")
			args := append([]string{"client", "-s", srv.URL, "--stop", "s1"}, tc.args...)
			if _, stderr, err := runInProcess(t, tc.home, args...); err != nil {
				t.Fatalf("client --stop: %v\n%s", err, stderr)
			}
			if got := auth(); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("Authorization headers %q, want [%q]", got, tc.want)
			}
		})
	}
}
