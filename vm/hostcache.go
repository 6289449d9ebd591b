package vm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
)

// A probe of QEMU is kept on disk, one file per QEMU binary and accelerator, so that a process
// that checks a resume (each synthesis is one) does not start QEMU to ask what a previous one
// already asked. The file holds the probe's answer and the key it was asked under: everything
// that can change the answer (the binary, its modules, the kernel, the host CPU, KVM's
// parameters). An answer is used only when its key equals the key computed now; otherwise, or
// when the file is unreadable, corrupt or too large, QEMU is probed again and the file
// replaced. Files are written whole (temporary file and rename), so several processes may
// share a directory: a reader sees one complete answer, and the last writer wins.

// hostCacheVersion is the version of the file's form. A file of another version is probed
// again and replaced.
const hostCacheVersion = 1

// maxHostCacheBytes bounds a cached answer before it is read. QEMU 7.2's answer under TCG is
// about 40 KiB; a few hundred machine types and devices more stay far below this.
const maxHostCacheBytes = 4 << 20

// maxKeyFileBytes bounds each host file read for the key (/proc/cpuinfo on a host with many
// CPUs is the largest, about 2 KiB per CPU).
const maxKeyFileBytes = 16 << 20

// hostKey is what the probe's answer depends on. It is comparable: an answer is used only when
// its key equals the current one.
type hostKey struct {
	QEMU   string `json:"qemu"` // absolute path, symlinks resolved
	Size   int64  `json:"size"`
	MTime  int64  `json:"mtime_ns"`
	CTime  int64  `json:"ctime_ns"`
	Inode  uint64 `json:"inode"`
	Device uint64 `json:"device"`
	Accel  Accel  `json:"accel"`
	// Modules is the identity (path, mtime, inode) of each directory QEMU loads modules from:
	// installing a module package adds devices without changing the binary.
	Modules string `json:"modules"`
	Kernel  string `json:"kernel"` // release and build
	CPU     string `json:"cpu"`    // SHA-256 of the host CPUs' identity, microcode and flags
	KVM     string `json:"kvm"`    // SHA-256 of the KVM modules' parameters; empty under TCG
}

// hostRecord is the file's form: the key and what QEMU answered, in exported fields.
type hostRecord struct {
	Version     int               `json:"version"`
	Key         hostKey           `json:"key"`
	QEMU        string            `json:"qemu_version"`
	Package     string            `json:"package"`
	Machines    map[string]string `json:"machines"` // machine type or alias -> machine type
	CPUs        []cpuDefinition   `json:"cpus"`
	MaxFeatures []string          `json:"max_features"`
	Devices     []string          `json:"devices"`
}

// hostCachePath is the file of the answer for one binary and accelerator: a hash of both, so
// that neither can name another directory.
func hostCachePath(dir string, k hostKey) string {
	sum := sha256.Sum256([]byte(k.QEMU + "\x00" + string(k.Accel)))
	return filepath.Join(dir, "qemu-"+hex.EncodeToString(sum[:12])+".json")
}

// currentHostKey computes the key of a probe of the binary at qemuPath (as resolveQEMU
// returns it) under accel.
func currentHostKey(qemuPath string, accel Accel) (hostKey, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(qemuPath, &st); err != nil {
		return hostKey{}, fmt.Errorf("stat %s: %w", qemuPath, err)
	}
	k := hostKey{
		QEMU: qemuPath, Size: st.Size, Inode: st.Ino, Device: uint64(st.Dev), Accel: accel,
		MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(),
		Modules: moduleDirs(qemuPath),
		Kernel:  readSmall("/proc/sys/kernel/osrelease") + " " + readSmall("/proc/sys/kernel/version"),
		CPU:     cpuIdentity("/proc/cpuinfo"),
	}
	if accel == AccelKVM {
		k.KVM = kvmParameters("/sys/module")
	}
	return k, nil
}

// resolveQEMU names the file that the binary found (by lookQEMU) runs: absolute, symlinks
// resolved, so that the key describes that file and a link pointed elsewhere changes it.
func resolveQEMU(found string) (string, error) {
	p, err := filepath.Abs(found)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", found, err)
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return "", fmt.Errorf("resolve %s: %w", found, err)
	}
	return p, nil
}

// moduleDirs describes the directories QEMU may load modules from: its build's (Debian's,
// Fedora's, a source build's beside the binary) and QEMU_MODULE_DIR. A directory's mtime
// changes when a module is added, removed or replaced by rename, as package managers do.
func moduleDirs(qemuPath string) string {
	dirs := []string{os.Getenv("QEMU_MODULE_DIR"), filepath.Join(filepath.Dir(qemuPath), "..", "lib", "qemu"),
		"/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib64/qemu", "/usr/lib/qemu"}
	var b strings.Builder
	for _, d := range dirs {
		var st syscall.Stat_t
		if d == "" || syscall.Stat(d, &st) != nil {
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", filepath.Clean(d), st.Mtim.Nano(), st.Ino)
	}
	return b.String()
}

// cpuIdentity hashes what of the host CPUs can change what QEMU offers a guest: vendor,
// family, model, stepping, microcode and flags, each distinct line once (frequencies and
// counters, which change all the time, are left out).
func cpuIdentity(path string) string {
	data, err := readBounded(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	keep := map[string]bool{"vendor_id": true, "cpu family": true, "model": true, "model name": true,
		"stepping": true, "microcode": true, "flags": true}
	seen := map[string]bool{}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, _, ok := strings.Cut(line, ":")
		if ok && keep[strings.TrimSpace(name)] && !seen[line] {
			seen[line] = true
			lines = append(lines, line)
		}
	}
	if err := sc.Err(); err != nil {
		return "unreadable: " + err.Error()
	}
	sort.Strings(lines)
	return hashLines(lines)
}

// kvmParameters hashes the parameters of the kvm, kvm_intel and kvm_amd modules (nested
// virtualisation, for one, changes the features KVM gives a guest).
func kvmParameters(sysModule string) string {
	var lines []string
	for _, m := range []string{"kvm", "kvm_intel", "kvm_amd"} {
		dir := filepath.Join(sysModule, m, "parameters")
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			lines = append(lines, m+"."+e.Name()+"="+readSmall(filepath.Join(dir, e.Name())))
		}
	}
	return hashLines(lines)
}

func hashLines(lines []string) string {
	h := sha256.New()
	for _, l := range lines {
		io.WriteString(h, l+"\n")
	}
	return hex.EncodeToString(h.Sum(nil))
}

// readSmall reads a small host file for the key; what cannot be read is part of the key as
// such, so that it becoming readable changes the key.
func readSmall(path string) string {
	data, err := readBounded(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}

// readBounded reads a file of at most maxKeyFileBytes. Files under /proc report size 0, so
// the bound is on what is read, not on what stat says.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err == nil && len(data) > maxKeyFileBytes {
		err = fmt.Errorf("%s is larger than %d bytes", path, maxKeyFileBytes)
	}
	return data, err
}

// errStaleHost is a cached answer asked under another key.
var errStaleHost = errors.New("cached answer is for another QEMU or host")

// readHostCache returns the answer kept at path if it was asked under key.
func readHostCache(path string, key hostKey) (*HostInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > maxHostCacheBytes || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %d bytes, want a regular file of at most %d", path, st.Size(), maxHostCacheBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxHostCacheBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxHostCacheBytes {
		return nil, fmt.Errorf("%s: more than %d bytes", path, maxHostCacheBytes)
	}
	var r hostRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case r.Version != hostCacheVersion:
		return nil, fmt.Errorf("%s: version %d, want %d", path, r.Version, hostCacheVersion)
	case r.Key != key:
		return nil, fmt.Errorf("%s: %w", path, errStaleHost)
	case r.QEMU == "" || len(r.Machines) == 0 || len(r.CPUs) == 0 || len(r.Devices) == 0:
		return nil, fmt.Errorf("%s: incomplete answer", path)
	}
	return r.info(), nil
}

// writeHostCache keeps info, asked under key, at path, replacing what was there.
func writeHostCache(path string, key hostKey, info *HostInfo) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(newHostRecord(key, info))
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, data)
}

func newHostRecord(key hostKey, info *HostInfo) hostRecord {
	r := hostRecord{Version: hostCacheVersion, Key: key, QEMU: info.QEMU, Package: info.Package,
		Machines: info.machine, MaxFeatures: sortedKeys(info.maxFeatures), Devices: sortedKeys(info.devices)}
	for _, c := range info.cpus {
		r.CPUs = append(r.CPUs, c)
	}
	sort.Slice(r.CPUs, func(i, j int) bool { return r.CPUs[i].Name < r.CPUs[j].Name })
	return r
}

func (r *hostRecord) info() *HostInfo {
	info := &HostInfo{Accel: r.Key.Accel, QEMU: r.QEMU, Package: r.Package, machine: r.Machines,
		cpus: map[string]cpuDefinition{}, maxFeatures: map[string]bool{}, devices: map[string]bool{}}
	for _, c := range r.CPUs {
		info.cpus[c.Name] = c
	}
	for _, f := range r.MaxFeatures {
		info.maxFeatures[f] = true
	}
	for _, d := range r.Devices {
		info.devices[d] = true
	}
	return info
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}
