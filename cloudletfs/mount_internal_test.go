package cloudletfs

import (
	"strings"
	"testing"
)

func TestCheckFUSEDevice(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/nonexistent/fuse", "does not exist: load the fuse module"},
		{"/", "cannot use /"},
	}
	for _, tc := range tests {
		if err := checkFUSEDevice(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkFUSEDevice(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b`); got != "/tmp/a b" {
		t.Fatalf("got %q", got)
	}
}
