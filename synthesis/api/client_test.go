package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestCreateKeepsUploading: the server answers an upload at once and reads the overlay
// afterwards, as the synthesis server does; the client must go on sending it after Create has
// returned, not drop the connection with the answer.
func TestCreateKeepsUploading(t *testing.T) {
	data := testData(4 << 20)
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(SessionStatus{ID: "s1", Base: "b"})
		http.NewResponseController(w).Flush()
		time.Sleep(300 * time.Millisecond) // the client has its answer long before this
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer srv.Close()
	c := &Client{Server: srv.URL}
	st, err := c.Create(context.Background(), SessionRequest{Base: "b"}, bytes.NewReader(data), int64(len(data)))
	if err != nil || st.ID != "s1" {
		t.Fatalf("create: %+v, %v", st, err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Fatalf("the server received %d of %d bytes", len(b), len(data))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upload never finished")
	}
}
