package main

import (
	"io"
	"strings"
	"testing"
)

func TestInterspersed(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	tests := []struct{ in, want string }{
		{"cloudlet base resume ID --hostfwd tcp:1-:2 --probe x", "cloudlet base resume --hostfwd tcp:1-:2 --probe x ID"},
		{"cloudlet --home H base resume ID --keep-hugepage-advice", "cloudlet --home H base resume --keep-hugepage-advice ID"},
		{"cloudlet base export ID -o F", "cloudlet base export -o F ID"},
		{"cloudlet base list", "cloudlet base list"},
		{"cloudlet base show --json ID", "cloudlet base show --json ID"},
		{"cloudlet base import FILE --hostfwd=x", "cloudlet base import --hostfwd=x FILE"},
		{"cloudlet nosuch a -b", "cloudlet nosuch a -b"},
	}
	for _, tc := range tests {
		got := strings.Join(interspersed(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("interspersed(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
