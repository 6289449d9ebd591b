package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
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
		{"cloudlet base push ID R/a:b --plain-http --registry-user u", "cloudlet base push --plain-http --registry-user u ID R/a:b"},
		{"cloudlet overlay push F R/a:b --docker-config C", "cloudlet overlay push --docker-config C F R/a:b"},
		{"cloudlet synthesis ID oci://R/a:b --pull-base --registry-password p", "cloudlet synthesis --pull-base --registry-password p ID oci://R/a:b"},
		{"cloudlet nosuch a -b", "cloudlet nosuch a -b"},
	}
	for _, tc := range tests {
		got := strings.Join(interspersed(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("interspersed(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRepeatableFlagsKeepCommas: each --exec (and --hostfwd, --probe...) value is taken whole,
// commas included, as users write shell and Python one-liners.
func TestRepeatableFlagsKeepCommas(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	var got []string
	create := app.Command("overlay").Command("create")
	create.Action = func(c *cli.Context) error { got = c.StringSlice("exec"); return nil }
	args := []string{"cloudlet", "overlay", "create", "ID", "--exec", `python3 -c "print(1, 2)"`, "--exec", "echo a,b", "-o", "x"}
	if err := app.Run(interspersed(app, args)); err != nil {
		t.Fatal(err)
	}
	if want := []string{`python3 -c "print(1, 2)"`, "echo a,b"}; !slices.Equal(got, want) {
		t.Fatalf("--exec values %q, want %q", got, want)
	}
}
