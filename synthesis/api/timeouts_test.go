package api

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// rawRequest opens a connection to the test server and writes head (a request line and
// headers) and the first bytes of a body.
func rawRequest(t *testing.T, ts *testServer, head string) net.Conn {
	t.Helper()
	u, _ := url.Parse(ts.URL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c
}

// closedWithin reads from c until the server closes it, and fails if that takes longer than d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server held the connection for more than %v (read %q)", d, b)
	}
	return string(b)
}

// TestServerTimeouts: a client that stops sending is cut off; streams that keep making
// progress are not.
func TestServerTimeouts(t *testing.T) {
	const short = 300 * time.Millisecond
	ts := newTestServer(t, ServerOptions{MaxSessions: 4, RequestTimeout: short, UploadIdle: short, run: runReadsAll})
	hs := ts.HTTPServer()
	if hs.ReadHeaderTimeout <= 0 || hs.IdleTimeout <= 0 {
		t.Errorf("ReadHeaderTimeout %v, IdleTimeout %v: want both set", hs.ReadHeaderTimeout, hs.IdleTimeout)
	}
	if hs.ReadTimeout != 0 || hs.WriteTimeout != 0 {
		t.Error("a global ReadTimeout or WriteTimeout would cut long uploads and event streams")
	}

	t.Run("stalled JSON body", func(t *testing.T) {
		c := rawRequest(t, ts, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"base\":")
		if got := closedWithin(t, c, 10*short); got != "" && !strings.Contains(got, "400") {
			t.Fatalf("got %q, want a 400 or a closed connection", got)
		}
	})
	t.Run("upload that keeps going", func(t *testing.T) {
		// 20 pieces, one per short/4: the upload takes far longer than RequestTimeout and
		// UploadIdle, but never pauses for as long as either.
		pr, pw := io.Pipe()
		go func() {
			for range 20 {
				time.Sleep(short / 4)
				pw.Write([]byte("0123456789"))
			}
			pw.Close()
		}()
		st, err := (&Client{Server: ts.URL, Token: testToken}).Create(t.Context(), SessionRequest{Base: ts.Base.ID}, pr, 200)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(7 * short)
		if got := ts.waitState(t, st.ID, 0); got.State != "running" {
			t.Fatalf("got %+v, want the session running", got)
		}
	})
	t.Run("event stream outlives the request timeout", func(t *testing.T) {
		code, st, body := ts.create(t, SessionRequest{})
		if code != 201 {
			t.Fatalf("create: %d %s", code, body)
		}
		req, _ := http.NewRequest("GET", ts.URL+"/v1/sessions/"+st.ID+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		time.Sleep(5 * short)
		deleted := make(chan int)
		go func() {
			time.Sleep(short)
			req, _ := http.NewRequest("DELETE", ts.URL+"/v1/sessions/"+st.ID, nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				deleted <- 0
				return
			}
			resp.Body.Close()
			deleted <- resp.StatusCode
		}()
		s := bufio.NewScanner(resp.Body)
		ended := false
		for !ended && s.Scan() {
			ended = s.Text() == "event: end"
		}
		if code := <-deleted; code != http.StatusNoContent {
			t.Fatalf("DELETE: got %d, want 204", code)
		}
		if !ended {
			t.Fatalf("the event stream ended without its end event: %v", s.Err())
		}
	})
}

// TestServerUploadIdle: an upload that goes silent fails its session, and frees its slot.
func TestServerUploadIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	ts := newTestServer(t, ServerOptions{MaxSessions: 1, UploadIdle: idle, run: runReadsAll})
	u, _ := url.Parse(ts.URL)
	c := rawRequest(t, ts, fmt.Sprintf("POST /v1/sessions?base=%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer "+testToken+"\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789", ts.Base.ID, u.Host))
	answer, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if answer.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s", answer.Status)
	}
	var id string
	ts.mu.Lock()
	for k := range ts.sessions {
		id = k
	}
	ts.mu.Unlock()
	got := ts.waitState(t, id, 20*idle)
	if got.State != "failed" || !strings.Contains(got.Error, "no upload data") {
		t.Fatalf("got %+v, want a failed session saying the upload stalled", got)
	}
	if code, _, body := ts.create(t, SessionRequest{}); code != http.StatusCreated {
		t.Fatalf("the stalled upload's slot is still held: %d %s", code, body)
	}
}
