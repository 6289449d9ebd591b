package api

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestParseTokens(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		err      string
	}{
		{"one", "0123456789abcdef\n", []string{"0123456789abcdef"}, ""},
		{"several, comments, blanks, CRLF", "# ops\r\n\r\n0123456789abcdef-1\r\n  0123456789abcdef-2  \n#x\n", []string{"0123456789abcdef-1", "0123456789abcdef-2"}, ""},
		{"no final newline", "0123456789abcdef", []string{"0123456789abcdef"}, ""},
		{"empty", "", nil, "no token"},
		{"only comments", "# a\n\n# b\n", nil, "no token"},
		{"too short", "0123456789abcdef\nshort\n", nil, "line 2"},
		{"space inside", "0123456789 abcdef0123\n", nil, "line 1"},
		{"not ASCII", "0123456789abcdefé\n", nil, "line 1"},
	}
	for _, tc := range tests {
		got, err := ParseTokens([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: got %v, %v, want an error about %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %q, %v, want %q", tc.name, got, err, tc.want)
		}
	}
}

// TestEnsureTokenFile: the first call makes a private file, later calls keep it, racing
// calls agree on one token, and a file others can read is refused.
func TestEnsureTokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	var wg sync.WaitGroup
	created := make([]bool, 8)
	for i := range created {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if created[i], err = EnsureTokenFile(path); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	n := 0
	for _, c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d of %d racing calls made the file, want 1", n, len(created))
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v, want mode 600", fi, err)
	}
	first, err := ReadTokenFile(path)
	if err != nil || len(first) != 1 || len(first[0]) != 64 {
		t.Fatalf("token file holds %q, %v, want one token of 64 hex digits", first, err)
	}
	if c, err := EnsureTokenFile(path); c || err != nil {
		t.Fatalf("second call: made %v, %v", c, err)
	}
	if again, _ := ReadTokenFile(path); !reflect.DeepEqual(again, first) {
		t.Errorf("token changed: %q, want %q", again, first)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".token-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("0123456789abcdef0123\n"), 0o644)
	if _, err := EnsureTokenFile(open); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("a token file readable by others: got %v, want an error", err)
	}
}
