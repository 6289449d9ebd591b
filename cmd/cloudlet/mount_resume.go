package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/vm"
)

// The files a mount shows beside its images, so that a stock QEMU (or any tool) can resume the
// VM from the mount with nothing of ours in the loop:
//
//	devstate     the device state (the overlay's, or the base's)
//	vm.json      the VM configuration and what each file is
//	kernel       the base's kernel and initrd, when it boots with them
//	initrd
//	qemu.args    QEMU's arguments, one a line: the QEMU driver's own command line
//	resume.qmp   the monitor commands QEMU reads on stdin to load devstate from fd 3
//	resume.sh    sh resume.sh: runs QEMU with those, and continues the guest once loaded
//
// (see vm.StockResume).
const (
	devstateName = vm.StockDevstateFile
	vmJSONName   = "vm.json"
	argsName     = vm.StockArgsFile
	qmpName      = vm.StockQMPFile
	scriptName   = "resume.sh"
	kernelName   = "kernel"
	initrdName   = "initrd"
)

// maxBootFileBytes bounds a kernel or initrd that the mount holds in memory.
const maxBootFileBytes = 64 << 20

// vmJSON is vm.json: what the mount holds and how to resume from it.
type vmJSON struct {
	Base    string    `json:"base"`
	Overlay string    `json:"overlay,omitempty"`
	Config  vm.Config `json:"config"`
	Disk    string    `json:"disk"`
	Memory  string    `json:"memory"`
	// MemoryShare is how the memory image must be mapped: privately (false), so that the
	// guest's writes stay in QEMU and the image stays the snapshot.
	MemoryShare bool   `json:"memory_share"`
	Devstate    string `json:"devstate"`
	Kernel      string `json:"kernel,omitempty"`
	Initrd      string `json:"initrd,omitempty"`
	QEMUArgs    string `json:"qemu_args"`
	ResumeQMP   string `json:"resume_qmp"`
	DevstateFD  int    `json:"devstate_fd"`
	// Cont is sent to the monitor once the MIGRATION event says completed.
	Cont         string `json:"cont"`
	ResumeScript string `json:"resume_script"`
	Accel        string `json:"accel"`
	// HugepageAdvice says what a stock QEMU does with guest RAM that cloudlet's driver does
	// not: see vm.StockResume.
	HugepageAdvice string `json:"hugepage_advice"`
}

// resumeFiles builds the files for a mount at dir (absolute) of base b, with the device state
// dev and overlayID ("" for a base); qemu.args has forwards and accel.
func resumeFiles(b *base.Base, overlayID string, dev []byte, dir string, forwards []vm.Forward, accel vm.Accel) ([]cloudletfs.File, vm.StockResume, error) {
	files := []cloudletfs.File{{Name: devstateName, Data: dev}}
	opts := b.VMOptions()
	for _, f := range []struct {
		path *string
		name string
	}{{&opts.Kernel, kernelName}, {&opts.Initrd, initrdName}} {
		if *f.path == "" {
			continue
		}
		data, err := readBounded(*f.path, maxBootFileBytes)
		if err != nil {
			return nil, vm.StockResume{}, err
		}
		files = append(files, cloudletfs.File{Name: f.name, Data: data})
		*f.path = filepath.Join(dir, f.name)
	}
	opts.Disk = vm.Disk{Path: filepath.Join(dir, "disk/image")}
	opts.Memory = vm.Memory{Path: filepath.Join(dir, "memory/image")}
	opts.Forwards, opts.Accel = forwards, accel
	s, err := vm.NewStockResume(opts)
	if err != nil {
		return nil, s, err
	}
	var args strings.Builder
	for _, a := range s.Args {
		if strings.ContainsAny(a, "\n\x00") {
			return nil, s, fmt.Errorf("qemu.args: argument %q has a newline", a)
		}
		args.WriteString(a + "\n")
	}
	info := vmJSON{Base: b.ID, Overlay: overlayID, Config: opts.Config,
		Disk: "disk/image", Memory: "memory/image", Devstate: devstateName,
		QEMUArgs: argsName, ResumeQMP: qmpName, DevstateFD: vm.DevstateFD, Cont: vm.ContCommand, ResumeScript: scriptName,
		Accel: string(s.Accel),
		HugepageAdvice: "kept: a stock QEMU advises MADV_HUGEPAGE on guest RAM, so each first touch of memory/image reads up to 2-4 MiB ahead; " +
			"cloudlet's driver drops the advice by starting QEMU through the cloudlet binary with CLOUDLET_QEMU_LAUNCHER_RAM_BYTES set to config.memory_bytes (see the README)"}
	if opts.Kernel != "" {
		info.Kernel = kernelName
	}
	if opts.Initrd != "" {
		info.Initrd = initrdName
	}
	j, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, s, err
	}
	files = append(files,
		cloudletfs.File{Name: vmJSONName, Data: append(j, '\n')},
		cloudletfs.File{Name: argsName, Data: []byte(args.String())},
		cloudletfs.File{Name: qmpName, Data: s.QMP},
		cloudletfs.File{Name: scriptName, Data: s.Script})
	return files, s, nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a mount serves", path, st.Size(), max)
	}
	return os.ReadFile(path)
}
