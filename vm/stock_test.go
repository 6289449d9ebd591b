package vm

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestStockResumeIsTheDriversCommandLine: a stock resume has the driver's VM arguments, in
// their order, with only the serial and monitor back ends and the start mode changed, RAM
// mapped privately, and monitor commands that set x-ignore-shared before reading the device
// state from DevstateFD.
func TestStockResumeIsTheDriversCommandLine(t *testing.T) {
	opts := Options{
		Config: DefaultConfig(), Kernel: "/m/kernel", Initrd: "/m/initrd", Accel: AccelTCG,
		Disk:     Disk{Path: "/m/disk/image"},
		Memory:   Memory{Path: "/m/memory/image", Share: true},
		Forwards: []Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}},
	}
	s, err := NewStockResume(opts)
	if err != nil {
		t.Fatal(err)
	}
	driver := buildArgs(opts, AccelTCG, "/run/x", true)
	norm := func(args []string) []string {
		out := slices.Clone(args)
		for i, a := range out {
			switch {
			case strings.HasPrefix(a, "socket,id=serial0"), a == "pty,id=serial0":
				out[i] = "SERIAL"
			case strings.HasPrefix(a, "socket,id=qmp"), a == "stdio,id=qmp,signal=off":
				out[i] = "MONITOR"
			case strings.Contains(a, `"share":`):
				out[i] = strings.Replace(a, `"share":true`, `"share":false`, 1)
			}
		}
		return out
	}
	if got, want := strings.Join(norm(s.Args), " "), strings.Join(norm(driver), " "); got != want {
		t.Fatalf("stock resume args differ from the driver's:\ngot  %s\nwant %s", got, want)
	}
	for _, want := range []string{`"mem-path":"/m/memory/image"`, `"share":false`, "file=/m/disk/image,", "hostfwd=tcp:127.0.0.1:8080-:80", "spawn=deny"} {
		if !strings.Contains(strings.Join(s.Args, " "), want) {
			t.Errorf("stock resume args lack %q: %v", want, s.Args)
		}
	}
	var cmds []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(s.QMP)), "\n") {
		var c map[string]any
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("QMP line %q: %v", line, err)
		}
		cmds = append(cmds, c)
	}
	var names []string
	for _, c := range cmds {
		names = append(names, c["execute"].(string))
	}
	if got := strings.Join(names, ","); got != "qmp_capabilities,migrate-set-capabilities,migrate-incoming" {
		t.Fatalf("QMP commands %s", got)
	}
	if !strings.Contains(string(s.QMP), `"x-ignore-shared"`) || !strings.Contains(string(s.QMP), `"fd:3"`) {
		t.Fatalf("QMP commands:\n%s", s.QMP)
	}
	bad := opts
	bad.Config.CPUs = 0
	if _, err := NewStockResume(bad); err == nil {
		t.Fatal("a stock resume of an invalid config")
	}
}
