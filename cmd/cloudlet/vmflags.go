package main

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

// runFlags are the flags of every command that runs a VM.
func runFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringSliceFlag{Name: "hostfwd", Usage: "forward a host port into the guest: tcp:[HOSTADDR:]HOSTPORT-:GUESTPORT (repeatable)"},
		&cli.StringFlag{Name: "accel", Value: "auto", Usage: "accelerator: auto (KVM with kvm_intel/kvm_amd, else TCG), kvm or tcg"},
		&cli.StringFlag{Name: "vnc", Usage: "serve the display over VNC, e.g. 127.0.0.1:1 (QEMU -vnc syntax)"},
		&cli.BoolFlag{Name: "keep-hugepage-advice", Usage: "let QEMU advise MADV_HUGEPAGE on guest RAM (for benchmarks; see README)"},
		&cli.StringFlag{Name: "serial-log", Usage: "append the guest's serial output to this file"},
	}, driverFlags()...)
}

// driverFlags choose who runs QEMU; the server takes them too.
func driverFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "driver", Value: "qemu", Usage: "who runs QEMU: qemu (a child of cloudlet) or libvirt (a transient domain that virsh lists)"},
		&cli.StringFlag{Name: "libvirt-uri", Usage: "libvirt connection URI, e.g. qemu:///system (default: libvirt's own default)"},
		&cli.StringFlag{Name: "guest-net", Value: "none", Usage: "what guests may reach besides the forwards into them: none, or internet (never the host's loopback; needs slirp4netns and --driver qemu)"},
		&cli.StringFlag{Name: "libvirt-log-dir", Usage: "where the libvirt daemon writes domain logs, read to quote QEMU's errors (default: a system daemon's, /var/log/libvirt/qemu)"},
	}
}

// parseDriver reads driverFlags. Asking a binary without the libvirt driver for it fails here,
// before anything is set up.
func parseDriver(c *cli.Context) (vm.Driver, vm.Libvirt, error) {
	lv := vm.Libvirt{URI: c.String("libvirt-uri"), LogDir: c.String("libvirt-log-dir")}
	d, err := vm.ParseDriver(c.String("driver"))
	if err == nil && d == vm.DriverLibvirt && !vm.LibvirtBuilt {
		err = fmt.Errorf("--driver libvirt: %w", vm.ErrLibvirtNotBuilt)
	}
	return d, lv, err
}

// runOptions is the parsed form of runFlags.
type runOptions struct {
	forwards           []vm.Forward
	accel              vm.Accel
	vnc                string
	keepHugepageAdvice bool
	serialLog          string
	driver             vm.Driver
	libvirt            vm.Libvirt
	network            vm.Network
	runAs              *vm.User
}

func parseRunOptions(c *cli.Context) (runOptions, error) {
	var o runOptions
	for _, s := range c.StringSlice("hostfwd") {
		f, err := vm.ParseForward(s)
		if err != nil {
			return o, err
		}
		o.forwards = append(o.forwards, f)
	}
	var err error
	if o.accel, err = vm.ParseAccel(c.String("accel")); err != nil {
		return o, err
	}
	o.vnc = c.String("vnc")
	o.keepHugepageAdvice = c.Bool("keep-hugepage-advice")
	o.serialLog = c.String("serial-log")
	if o.driver, o.libvirt, err = parseDriver(c); err != nil {
		return o, err
	}
	if o.network, err = vm.ParseNetwork(c.String("guest-net")); err != nil {
		return o, fmt.Errorf("--guest-net: %w", err)
	}
	o.runAs, err = parseQEMUUser(c)
	return o, err
}

// apply copies the run options into a VM's options; log receives driver notes. The returned
// function closes the serial log.
func (o runOptions) apply(v *vm.Options, log io.Writer) (func(), error) {
	v.Forwards = o.forwards
	v.Accel = o.accel
	v.VNC = o.vnc
	v.KeepHugepageAdvice = o.keepHugepageAdvice
	v.Log = log
	v.Driver, v.Libvirt = o.driver, o.libvirt
	v.Network = o.network
	v.RunAs = o.runAs
	if o.serialLog == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(o.serialLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--serial-log: %w", err)
	}
	v.SerialLog = f
	return func() { f.Close() }, nil
}

func parseProbe(s string) (*probe.Probe, error) {
	if s == "" {
		return nil, nil
	}
	p, err := probe.Parse(s)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// reachability tells a user how to get at a running guest.
func reachability(w io.Writer, o runOptions) {
	for _, f := range o.forwards {
		host := f.HostAddr
		if host == "" {
			host = "0.0.0.0"
		}
		fmt.Fprintf(w, "  guest %s port %d is at %s:%d\n", f.Proto, f.GuestPort, host, f.HostPort)
	}
	if o.vnc != "" {
		fmt.Fprintf(w, "  display: vnc %s\n", o.vnc)
	}
}
