package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
)

// TestMountResumeFiles: a mount shows, beside the images, the base's device state and kernel,
// vm.json, and a qemu.args that resumes from the mount's own files with the forwards given;
// flags that cannot work are refused before anything is mounted.
func TestMountResumeFiles(t *testing.T) {
	testguest.RequireFUSE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	b := syntheticBase(t, home)
	mp := t.TempDir()
	cmd := startMount(t, ctx, home, b.ID, mp, "--hostfwd", "tcp:127.0.0.1:8080-:80", "--accel", "tcg")
	defer stopWith(t, cmd, syscall.SIGTERM)

	for name, want := range map[string]string{"devstate": "devstate", "kernel": "kernel"} {
		if got, err := os.ReadFile(filepath.Join(mp, name)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want the base's %q", name, got, err, want)
		}
	}
	var info vmJSON
	if err := json.Unmarshal(mustRead(t, filepath.Join(mp, "vm.json")), &info); err != nil {
		t.Fatal(err)
	}
	if info.Base != b.ID || info.MemoryShare || info.Accel != "tcg" || info.Kernel != "kernel" || info.Initrd != "" ||
		info.Config.MemoryBytes != b.Manifest.VM.MemoryBytes || info.DevstateFD != 3 {
		t.Errorf("vm.json: %+v", info)
	}
	args := strings.Split(strings.TrimSuffix(string(mustRead(t, filepath.Join(mp, "qemu.args"))), "\n"), "\n")
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-kernel " + filepath.Join(mp, "kernel"),
		`"mem-path":"` + filepath.Join(mp, "memory", "image") + `"`, `"share":false`,
		"file=" + filepath.Join(mp, "disk", "image") + ",",
		"hostfwd=tcp:127.0.0.1:8080-:80", "-accel tcg", "-incoming defer", "stdio,id=qmp",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("qemu.args lacks %q:\n%s", want, strings.Join(args, "\n"))
		}
	}
	if slices.Contains(args, "") {
		t.Errorf("qemu.args has an empty line:\n%s", strings.Join(args, "\n"))
	}
	if qmp := string(mustRead(t, filepath.Join(mp, "resume.qmp"))); !strings.Contains(qmp, "x-ignore-shared") || !strings.Contains(qmp, "fd:3") {
		t.Errorf("resume.qmp:\n%s", qmp)
	}
	if f, err := os.OpenFile(filepath.Join(mp, "qemu.args"), os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Error("qemu.args opened for writing")
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"capture and read-only", []string{"--read-only", "--capture", "--cache", t.TempDir()}, "--read-only"},
		{"bad forward", []string{"--hostfwd", "tcp:80"}, "--hostfwd"},
		{"bad accelerator", []string{"--accel", "xen"}, "--accel"},
		{"missing overlay", []string{"--overlay", filepath.Join(t.TempDir(), "none.overlay")}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, ctx, home, append([]string{"mount", b.ID, t.TempDir()}, tc.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure mentioning %q", r.code, r.stderr, tc.want)
			}
		})
	}
}
