package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// probeTimeout bounds one probe of QEMU: start, five queries, quit. It takes a tenth of a
// second on an idle host.
const probeTimeout = 20 * time.Second

// Host is what this host's QEMU can run, asked of QEMU once per accelerator and kept, so that
// checking a resume costs one short QEMU run per process, or none with a cache directory
// (NewCachedHost) that holds a previous process's answer. Whoever resumes VMs owns one and
// passes it in Options.Host; it is safe for concurrent use, and its zero value asks the
// qemu-system-x86_64 on PATH.
type Host struct {
	qemu     string // binary, as Options.QEMU; fixed after construction
	cacheDir string // where answers are kept across processes; "" keeps none. Fixed.

	// mu is held for a whole Info call: a second caller waits for the first's answer (at most
	// probeTimeout) instead of starting QEMU again.
	mu    sync.Mutex
	known map[Accel]*HostInfo // guarded by mu
}

// NewHost returns a Host for the QEMU binary qemu ("" means qemu-system-x86_64 from PATH).
// It probes nothing until asked.
func NewHost(qemu string) *Host { return &Host{qemu: qemu} }

// NewCachedHost is NewHost with answers kept in dir (created when first written; "" keeps
// none), shared by every process that uses the same dir: a probe runs again only when the
// QEMU binary, its module directories, the kernel, the host CPU or KVM's parameters have
// changed since the kept answer. The cache is a plain directory rather than an option of
// NewHost because callers differ in only this: those with a cloudlet home keep answers under
// it, tests and callers without one do not.
//
// A wrapper script given as the binary is keyed by the script alone: a change of the QEMU it
// runs is not seen.
func NewCachedHost(qemu, dir string) *Host { return &Host{qemu: qemu, cacheDir: dir} }

// HostInfo is what QEMU reported under one accelerator.
type HostInfo struct {
	Accel   Accel
	QEMU    string            // version, "7.2.22"
	Package string            // the distribution's build, e.g. "Debian 1:7.2+dfsg-7"
	machine map[string]string // machine type or alias -> machine type
	cpus    map[string]cpuDefinition
	// maxFeatures is what the max model gets: every feature this QEMU can give a guest under
	// this accelerator on this host.
	maxFeatures map[string]bool
	devices     map[string]bool
}

// cpuDefinition is one entry of QMP query-cpu-definitions.
type cpuDefinition struct {
	Name          string   `json:"name"`
	AliasOf       string   `json:"alias-of"`
	Unavailable   []string `json:"unavailable-features"`
	MigrationSafe bool     `json:"migration-safe"`
}

// Info returns what QEMU can do under accel (kvm or tcg), asking it the first time. A failed
// probe is not kept: the next call asks again.
func (h *Host) Info(ctx context.Context, accel Accel) (*HostInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if info := h.known[accel]; info != nil {
		return info, nil
	}
	info, err := h.ask(ctx, accel)
	if err != nil {
		return nil, err
	}
	if h.known == nil {
		h.known = map[Accel]*HostInfo{}
	}
	h.known[accel] = info
	return info, nil
}

// ask returns the answer kept in the cache directory for this QEMU and host, or probes QEMU
// and keeps its answer there. Keeping it is best effort: a cache that cannot be written (a
// read-only home) costs a probe per process, as without one.
func (h *Host) ask(ctx context.Context, accel Accel) (*HostInfo, error) {
	if h.cacheDir == "" {
		return probeHost(ctx, h.qemu, accel)
	}
	found, err := lookQEMU(h.qemu)
	if err != nil {
		return nil, err
	}
	resolved, err := resolveQEMU(found)
	if err != nil {
		return nil, err
	}
	key, err := currentHostKey(resolved, accel)
	if err != nil {
		return nil, err
	}
	path := hostCachePath(h.cacheDir, key)
	if info, err := readHostCache(path, key); err == nil {
		return info, nil
	}
	// The key is taken before the probe: a binary replaced in between is kept under the old
	// key, which the next process does not match. QEMU runs by the name it was found under,
	// as the VM will.
	info, err := probeHost(ctx, found, accel)
	if err != nil {
		return nil, err
	}
	_ = writeHostCache(path, key, info)
	return info, nil
}

// probeHost runs QEMU with no machine under accel and asks it what it has.
func probeHost(ctx context.Context, qemu string, accel Accel) (*HostInfo, error) {
	qemuPath, err := lookQEMU(qemu)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	runDir, err := makeRunDir()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(runDir)
	sock := filepath.Join(runDir, "qmp.sock")
	cmd := exec.Command(qemuPath, "-machine", "none", "-accel", string(accel), "-nodefaults", "-no-user-config",
		"-display", "none", "-sandbox", sandboxArg, "-S",
		"-chardev", "socket,id=qmp,path="+sock+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	stderr := &tailBuffer{max: 4 << 10}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("probe %s: %w", qemuPath, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	info, err := queryHost(ctx, sock, exited)
	cmd.Process.Kill()
	waitErr := <-exited
	if err != nil {
		if msg := stderr.String(); msg != "" {
			return nil, fmt.Errorf("probe %s under %s: %w; qemu said: %s", qemuPath, accel, err, msg)
		}
		return nil, fmt.Errorf("probe %s under %s: %w", qemuPath, accel, errors.Join(err, waitErr))
	}
	info.Accel = accel
	return info, nil
}

// queryHost connects to the probe's monitor and asks.
func queryHost(ctx context.Context, sock string, exited <-chan error) (*HostInfo, error) {
	q, err := dialUntil(ctx, sock, exited)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	var version struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
		Package string `json:"package"`
	}
	var machines []struct {
		Name  string `json:"name"`
		Alias string `json:"alias"`
	}
	var cpus []cpuDefinition
	var types []struct {
		Name string `json:"name"`
	}
	steps := []struct {
		cmd  string
		args any
		out  any
	}{
		{"query-version", nil, &version},
		{"query-machines", nil, &machines},
		{"query-cpu-definitions", nil, &cpus},
		{"qom-list-types", map[string]any{"implements": "device", "abstract": false}, &types},
	}
	for _, s := range steps {
		if err := q.Execute(ctx, s.cmd, s.args, s.out); err != nil {
			return nil, err
		}
	}
	maxFeatures, err := expandFeatures(ctx, q, tcgCPU)
	if err != nil {
		return nil, err
	}
	info := &HostInfo{
		QEMU:    fmt.Sprintf("%d.%d.%d", version.QEMU.Major, version.QEMU.Minor, version.QEMU.Micro),
		Package: version.Package, machine: map[string]string{}, cpus: map[string]cpuDefinition{},
		maxFeatures: map[string]bool{}, devices: map[string]bool{},
	}
	for _, m := range machines {
		info.machine[m.Name] = m.Name
		if m.Alias != "" {
			info.machine[m.Alias] = m.Name
		}
	}
	for _, c := range cpus {
		info.cpus[c.Name] = c
	}
	for _, f := range maxFeatures {
		info.maxFeatures[f] = true
	}
	for _, t := range types {
		info.devices[t.Name] = true
	}
	return info, nil
}

// dialUntil waits for a QEMU's monitor socket, giving up when QEMU exits or ctx ends.
func dialUntil(ctx context.Context, sock string, exited <-chan error) (*qmp, error) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		q, err := dialQMP(ctx, sock)
		if err == nil {
			return q, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("qemu exited before its monitor was ready: %v", err)
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu monitor not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// expandFeatures asks QEMU which CPUID features model has on its machine and accelerator:
// the static expansion names each feature once, by its canonical name.
func expandFeatures(ctx context.Context, q monitor, model string) ([]string, error) {
	var exp struct {
		Model struct {
			Props map[string]any `json:"props"`
		} `json:"model"`
	}
	args := map[string]any{"type": "static", "model": map[string]any{"name": model}}
	if err := q.Execute(ctx, "query-cpu-model-expansion", args, &exp); err != nil {
		return nil, fmt.Errorf("CPU model %s: %w", model, err)
	}
	var features []string
	for name, v := range exp.Model.Props {
		if on, ok := v.(bool); ok && on {
			features = append(features, name)
		}
	}
	sort.Strings(features)
	return features, nil
}

// Machine resolves a machine type or alias ("q35") to the machine type it is on this host.
func (i *HostInfo) Machine(name string) (string, bool) {
	m, ok := i.machine[name]
	return m, ok
}
