package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWrites checks what a reader of the directory sees after each way of writing: the new
// bytes, mode 0600 (also over a 0644 file, with an open umask), and no temporary file.
func TestWrites(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	tests := []struct {
		name     string
		existing []byte // a 0644 file already at the path, if not nil
		write    func(path string) error
		want     []byte
		wantErr  error
	}{
		{"new file", nil, func(p string) error { return WriteFile(p, []byte("new")) }, []byte("new"), nil},
		{"replace a public file", []byte("old"), func(p string) error { return WriteFile(p, []byte("new")) }, []byte("new"), nil},
		{"abort keeps the old file", []byte("old"), func(p string) error {
			f, err := Create(p)
			if err != nil {
				return err
			}
			f.Write([]byte("half"))
			f.Abort()
			return nil
		}, []byte("old"), nil},
		{"commit after writes", nil, func(p string) error {
			f, err := Create(p)
			if err != nil {
				return err
			}
			defer f.Abort()
			f.Write([]byte("a"))
			f.Write([]byte("b"))
			return f.Commit()
		}, []byte("ab"), nil},
		{"write new", nil, func(p string) error { return WriteNew(p, []byte("token")) }, []byte("token"), nil},
		{"write new over a file", []byte("theirs"), func(p string) error { return WriteNew(p, []byte("mine")) }, []byte("theirs"), os.ErrExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tc.existing != nil {
				if err := os.WriteFile(path, tc.existing, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := tc.write(path)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("write: got error %v, want %v", err, tc.wantErr)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(tc.want) {
				t.Errorf("content: got %q, want %q", got, tc.want)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			wantMode := Mode
			if tc.wantErr != nil || string(tc.want) == string(tc.existing) {
				wantMode = 0o644 // the file that was there is left alone
			}
			if fi.Mode().Perm() != wantMode {
				t.Errorf("mode: got %v, want %v", fi.Mode().Perm(), wantMode)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries, want 1 (no temporary file left)", len(entries))
			}
		})
	}
}
