package api

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
)

// TestSessionsGetChunkCache: the server's chunk cache reaches every session: its own sessions
// get the store itself, and a supervised session's request names its directory and bound, for
// the supervisor to open in its process.
func TestSessionsGetChunkCache(t *testing.T) {
	chunks, err := chunkstore.Open(filepath.Join(t.TempDir(), "chunks"), 123<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer chunks.Close()

	t.Run("in process", func(t *testing.T) {
		got := make(chan synthesis.ChunkStore, 1)
		ts := newTestServer(t, ServerOptions{MaxSessions: 1, Chunks: chunks,
			run: func(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
				got <- o.Fetch.Store
				return runUntilStopped(ctx, o)
			}})
		if code, _, msg := ts.create(t, SessionRequest{Base: ts.Base.ID, URL: "http://127.0.0.1:1/x"}); code != http.StatusCreated {
			t.Fatalf("create: %d %s", code, msg)
		}
		select {
		case s := <-got:
			if s != synthesis.ChunkStore(chunks) {
				t.Fatalf("the session's chunk store is %v, want the server's", s)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the session did not run")
		}
	})
	t.Run("supervised", func(t *testing.T) {
		got := make(chan supervisor.Request, 1)
		ts := newTestServer(t, ServerOptions{MaxSessions: 1, Chunks: chunks, Sessions: filepath.Join(t.TempDir(), "sessions"),
			StartSupervisor: func(d supervisor.Dir) (*exec.Cmd, error) {
				req, err := d.ReadRequest()
				if err != nil {
					return nil, err
				}
				got <- req
				d.WriteState(supervisor.State{State: "stopped"})
				cmd := exec.Command("true")
				return cmd, cmd.Start()
			}})
		if code, _, msg := ts.create(t, SessionRequest{Base: ts.Base.ID, URL: "http://127.0.0.1:1/x"}); code != http.StatusCreated {
			t.Fatalf("create: %d %s", code, msg)
		}
		select {
		case req := <-got:
			if req.ChunkStore != chunks.Dir() || req.ChunkStoreBytes != 123<<20 {
				t.Fatalf("the request names chunk store %q of %d bytes, want %q of %d", req.ChunkStore, req.ChunkStoreBytes, chunks.Dir(), 123<<20)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no supervisor was started")
		}
	})
}
