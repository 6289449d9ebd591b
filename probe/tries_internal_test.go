package probe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestTriesGiveWay: at maxTries in flight, a new try takes the newest one's place and the
// oldest stay: a guest that serves requests in order answers the oldest first.
func TestTriesGiveWay(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer srv.Close()
	p, err := Parse(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	tr := newTries(context.Background(), p)
	defer tr.stop()
	for range maxTries + 2 {
		tr.start()
	}
	if len(tr.live) != maxTries {
		t.Fatalf("%d tries in flight, want %d", len(tr.live), maxTries)
	}
	for id := 1; id < maxTries; id++ {
		if _, ok := tr.live[id]; !ok {
			t.Errorf("try %d gave way; want the oldest kept", id)
		}
	}
	for _, id := range []int{maxTries, maxTries + 1} {
		if _, ok := tr.live[id]; ok {
			t.Errorf("try %d still in flight; want it to have given way", id)
		}
	}
	if _, ok := tr.live[maxTries+2]; !ok {
		t.Errorf("the newest try is not in flight")
	}
}
