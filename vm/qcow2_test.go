package vm

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQCOW2Backing reads the backing file of layers made by qemu-img, and refuses headers that
// are not qcow2 or claim an oversized name.
func TestQCOW2Backing(t *testing.T) {
	dir := t.TempDir()
	img := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		if out, err := exec.Command("qemu-img", append(append([]string{"create", "-q"}, args...), p)...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		return p
	}
	raw := img("base,with comma.raw", "-f", "raw", "-o", "size=1M")
	tests := []struct {
		name, path           string
		wantBacking, wantFmt string
		wantErr              string
	}{
		{"v3 with format", img("v3.qcow2", "-f", "qcow2", "-F", "raw", "-b", raw), raw, "raw", ""},
		{"v2 (compat 0.10)", img("v2.qcow2", "-f", "qcow2", "-o", "compat=0.10", "-F", "raw", "-b", raw), raw, "raw", ""},
		{"relative name", img("rel.qcow2", "-f", "qcow2", "-F", "raw", "-b", filepath.Base(raw)), filepath.Base(raw), "raw", ""},
		{"no backing", img("plain.qcow2", "-f", "qcow2", "-o", "size=1M"), "", "", ""},
		{"not qcow2", raw, "", "", "magic"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, f, err := qcow2Backing(tc.path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || b != tc.wantBacking || f != tc.wantFmt {
				t.Fatalf("got %q, %q, %v; want %q, %q", b, f, err, tc.wantBacking, tc.wantFmt)
			}
		})
	}
}

// TestQCOW2BackingBounds: a header that claims a backing name longer than the format allows is
// refused before anything is allocated for it.
func TestQCOW2BackingBounds(t *testing.T) {
	h := make([]byte, 104)
	copy(h, []byte{0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3})
	h[8+7] = 104                                        // backing name offset
	h[16], h[17], h[18], h[19] = 0xff, 0xff, 0xff, 0xff // its claimed length
	if _, _, err := readQCOW2Backing(strings.NewReader(string(h))); err == nil || !strings.Contains(err.Error(), "at most 1023") {
		t.Fatalf("error %v", err)
	}
}
