package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/internal/testlibvirt"
	"github.com/cloudlet/cloudlet/synthesis/api"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// TestLibvirtEndToEnd is the operator's path with --driver libvirt against a private daemon:
// base create, overlay create, then synthesis with early start through the server; the app
// answers while virsh lists the domain; 'virsh destroy' ends the session cleanly; and nothing
// is left behind.
func TestLibvirtEndToEnd(t *testing.T) {
	g := testguest.Get(t)
	testguest.RequireFUSE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	home := t.TempDir()
	d := testlibvirt.Start(t, home)
	t.Cleanup(func() { noQEMULeft(t, home) })
	lv := []string{"--driver", "libvirt", "--libvirt-uri", d.URI, "--libvirt-log-dir", d.LogDir}

	port := testguest.FreePort(t)
	r := run(t, ctx, home, append([]string{"base", "create", "--disk", g.RootFS, "--kernel", g.Kernel, "--initrd", g.Initrd,
		"--memory", "128M", "--name", "libvirt-e2e",
		"--ready", fmt.Sprintf("http://127.0.0.1:%d/", port), "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port)}, lv...)...)
	if r.code != 0 {
		t.Fatalf("base create --driver libvirt: exit %d\n%s\ndaemon:\n%s", r.code, r.stderr, d.Log())
	}
	if !strings.Contains(r.stderr, "libvirt domain cloudlet-") {
		t.Errorf("base create does not name its domain:\n%s", r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	id := lines[len(lines)-1]

	file := filepath.Join(t.TempDir(), "app.overlay")
	p8080 := testguest.FreePort(t)
	r = run(t, ctx, home, append([]string{"overlay", "create", id,
		"--exec", "mkdir -p /www2 && echo custom-app > /www2/index.html", "--exec", "httpd -p 8080 -h /www2",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", p8080), "--ready", fmt.Sprintf("http://127.0.0.1:%d/", p8080),
		"-o", file}, lv...)...)
	if r.code != 0 {
		t.Fatalf("overlay create --driver libvirt: exit %d\n%s", r.code, r.stderr)
	}

	// The server runs the session as a domain.
	addr, serr := startServe(t, home, append(lv, "--allow-origin", "127.0.0.0/8")...) // the origin is on loopback
	origin := origin.NewShapedServer(mustRead(t, file))
	defer origin.Close()
	origin.Shape(10*time.Millisecond, 38e6/8)
	sid := clientSession(t, ctx, home, addr, id, serr, "-u", origin.URL())
	domain := "cloudlet-" + sid
	if list, _ := d.Virsh("list"); !strings.Contains(list, domain) || !strings.Contains(list, "running") {
		t.Fatalf("virsh list does not show %s running:\n%s", domain, list)
	}
	// A confined QEMU's mounts live in cloudletfs's run directory, where its user can reach them.
	mnt := append(mountsUnder(t, home), mountsUnder(t, cloudletfs.RunDir)...)
	if len(mnt) == 0 {
		t.Fatal("no cloudletfs mount while the session runs")
	}

	if _, err := d.Virsh("destroy", domain); err != nil {
		t.Fatal(err)
	}
	st := waitSession(t, ctx, home, addr, sid)
	if st.State != "stopped" {
		t.Fatalf("session after virsh destroy: %+v", st)
	}
	if m := append(mountsUnder(t, home), mountsUnder(t, cloudletfs.RunDir)...); len(m) != 0 {
		t.Fatalf("mounts left after the session stopped: %v", m)
	}
	if names := d.Domains(t); len(names) != 0 {
		t.Fatalf("domains left: %v", names)
	}
}

// waitSession polls the server until the session is no longer running.
func waitSession(t *testing.T, ctx context.Context, home, addr, sid string) api.SessionStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st api.SessionStatus
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/sessions/"+sid, nil)
		req.Header.Set("Authorization", "Bearer "+serverToken(t, home))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if err == nil && st.State != "running" {
			return st
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("session %s still %q after 30 s (%v)", sid, st.State, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, dir+"/"), false
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out
}

// TestBuiltWithoutLibvirt: a binary built without cgo's libvirt says so when asked for the
// libvirt driver, before it touches anything.
func TestBuiltWithoutLibvirt(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "cloudlet")
	if out, err := exec.Command("go", "build", "-tags", "nolibvirt", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags nolibvirt: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"base", "resume", "0123456789ab", "--driver", "libvirt"},
		{"serve", "--driver", "libvirt"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "built without libvirt support") {
			t.Errorf("cloudlet %v: %v\n%s", args, err, out)
		}
	}
}
