package supervisor

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenChunks: a session opens the chunk cache its request names, runs without one if the
// request names none, and runs without one (saying why in its log) if it cannot be opened.
func TestOpenChunks(t *testing.T) {
	tmp := t.TempDir()
	notDir := filepath.Join(tmp, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     Request
		open    bool
		wantLog string
	}{
		{"named", Request{ChunkStore: filepath.Join(tmp, "chunks"), ChunkStoreBytes: 1 << 20}, true, ""},
		{"none", Request{}, false, ""},
		{"cannot be made", Request{ChunkStore: filepath.Join(notDir, "chunks"), ChunkStoreBytes: 1 << 20}, false, "no chunk cache"},
		{"no bound", Request{ChunkStore: filepath.Join(tmp, "chunks")}, false, "no chunk cache"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			chunks := openChunks(tt.req, Dir(filepath.Join(tmp, "sessions", "s1")), &log)
			if chunks != nil {
				defer chunks.Close()
			}
			if (chunks != nil) != tt.open {
				t.Fatalf("store opened: %v, want %v (log %q)", chunks != nil, tt.open, log.String())
			}
			if chunks != nil && chunks.Dir() != tt.req.ChunkStore {
				t.Fatalf("store in %s, want %s", chunks.Dir(), tt.req.ChunkStore)
			}
			if !strings.Contains(log.String(), tt.wantLog) || tt.wantLog == "" && log.Len() > 0 {
				t.Fatalf("log %q, want %q", log.String(), tt.wantLog)
			}
		})
	}
}
