package vm

import (
	"encoding/xml"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The libvirt domain is kept as small as libvirt allows: it owns the machine, CPU, memory
// size, kernel, serial port and monitor; RAM and the PCI devices come from guestArgs through
// <qemu:commandline>, exactly as the QEMU driver passes them. So both drivers give the guest
// the same hardware, and a snapshot from one resumes under the other. Libvirt's defaults
// that would add guest-visible hardware (a USB controller, a balloon, no ACPI) are turned off.

type domainXML struct {
	XMLName    xml.Name    `xml:"domain"`
	Type       string      `xml:"type,attr"`
	QEMUNS     string      `xml:"xmlns:qemu,attr"`
	Name       string      `xml:"name"`
	Memory     sizeXML     `xml:"memory"`
	VCPU       int         `xml:"vcpu"`
	OS         osXML       `xml:"os"`
	Features   featuresXML `xml:"features"`
	CPU        cpuXML      `xml:"cpu"`
	OnPoweroff string      `xml:"on_poweroff"`
	OnCrash    string      `xml:"on_crash"`
	Devices    devicesXML  `xml:"devices"`
	// SecLabel runs QEMU as Options.RunAs (libvirt's DAC driver), instead of qemu.conf's user.
	SecLabel *seclabelXML `xml:"seclabel,omitempty"`
	// encoding/xml writes a prefixed name as it is; the prefix is declared on <domain>.
	Commandline commandlineXML `xml:"qemu:commandline"`
}

type sizeXML struct {
	Unit  string `xml:"unit,attr"`
	Value int64  `xml:",chardata"`
}

type osXML struct {
	Type struct {
		Arch    string `xml:"arch,attr"`
		Machine string `xml:"machine,attr"`
		Value   string `xml:",chardata"`
	} `xml:"type"`
	Kernel  string `xml:"kernel,omitempty"`
	Initrd  string `xml:"initrd,omitempty"`
	Cmdline string `xml:"cmdline,omitempty"`
}

type featuresXML struct {
	ACPI struct{} `xml:"acpi"`
}

type cpuXML struct {
	Mode  string `xml:"mode,attr"`
	Check string `xml:"check,attr"`
	Model *struct {
		Fallback string `xml:"fallback,attr"`
		Value    string `xml:",chardata"`
	} `xml:"model,omitempty"`
}

type devicesXML struct {
	Emulator   string `xml:"emulator"`
	Controller struct {
		Type  string `xml:"type,attr"`
		Model string `xml:"model,attr"`
	} `xml:"controller"`
	Memballoon struct {
		Model string `xml:"model,attr"`
	} `xml:"memballoon"`
	Serial struct {
		Type   string `xml:"type,attr"`
		Source struct {
			Mode string `xml:"mode,attr"`
			Path string `xml:"path,attr"`
		} `xml:"source"`
		Target struct {
			Type string `xml:"type,attr"`
			Port int    `xml:"port,attr"`
		} `xml:"target"`
	} `xml:"serial"`
}

// dacLabel is the user a root cloudlet's domain runs QEMU as: RunAs, or root where RunAs asks
// for no change of user (--qemu-user root). A cloudlet that is not root leaves it to libvirt.
func dacLabel(u *User) (uid, gid int, ok bool) {
	switch {
	case u.switches():
		return u.UID, u.GID, true
	case os.Geteuid() == 0:
		return 0, 0, true
	}
	return 0, 0, false
}

// seclabelXML is a static DAC label: the user and group QEMU runs as. relabel='no': libvirt
// changes the owner of no file for it. cloudlet hands QEMU's files to the user itself (the run
// directory, copies of the kernel and initrd; cloudletfs mounts expose the images to it), and
// libvirt could not relabel FUSE files anyway.
type seclabelXML struct {
	Type    string `xml:"type,attr"`
	Model   string `xml:"model,attr"`
	Relabel string `xml:"relabel,attr"`
	Label   string `xml:"label"`
}

type commandlineXML struct {
	Args []valueXML `xml:"qemu:arg"`
	Env  []envXML   `xml:"qemu:env"`
}

type valueXML struct {
	Value string `xml:"value,attr"`
}

type envXML struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

// domainSpec is what the domain XML is made of besides Options.
type domainSpec struct {
	name     string
	accel    Accel
	emulator string
	runDir   string // holds the serial socket
	incoming bool
	env      map[string]string
}

func buildDomainXML(opts Options, s domainSpec) (string, error) {
	c := opts.Config
	d := domainXML{
		Type:       "qemu",
		QEMUNS:     "http://libvirt.org/schemas/domain/qemu/1.0",
		Name:       s.name,
		Memory:     sizeXML{Unit: "MiB", Value: c.MemoryBytes >> 20},
		VCPU:       c.CPUs,
		OnPoweroff: "destroy",
		OnCrash:    "destroy",
	}
	if s.accel == AccelKVM {
		d.Type = "kvm"
	}
	d.OS.Type.Arch, d.OS.Type.Machine, d.OS.Type.Value = "x86_64", c.Machine, "hvm"
	if opts.Kernel != "" {
		d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline = opts.Kernel, opts.Initrd, c.Append
	}
	switch c.CPU {
	case "max":
		d.CPU = cpuXML{Mode: "maximum", Check: "none"}
	case "host":
		d.CPU = cpuXML{Mode: "host-passthrough", Check: "none"}
	default:
		d.CPU = cpuXML{Mode: "custom", Check: "none"}
		d.CPU.Model = &struct {
			Fallback string `xml:"fallback,attr"`
			Value    string `xml:",chardata"`
		}{"forbid", c.CPU}
	}
	dev := &d.Devices
	dev.Emulator = s.emulator
	dev.Controller.Type, dev.Controller.Model = "usb", "none"
	dev.Memballoon.Model = "none"
	dev.Serial.Type = "unix"
	dev.Serial.Source.Mode, dev.Serial.Source.Path = "bind", filepath.Join(s.runDir, "serial.sock")
	dev.Serial.Target.Type, dev.Serial.Target.Port = "isa-serial", 0

	args := guestArgs(opts)
	if opts.VNC != "" {
		// Not <graphics>: libvirt would add a second video device to go with it.
		args = append(args, "-vnc", opts.VNC)
	}
	if s.incoming {
		args = append(args, "-incoming", "defer")
	}
	for _, a := range args {
		d.Commandline.Args = append(d.Commandline.Args, valueXML{a})
	}
	for _, k := range slices.Sorted(maps.Keys(s.env)) {
		d.Commandline.Env = append(d.Commandline.Env, envXML{k, s.env[k]})
	}
	if uid, gid, ok := dacLabel(opts.RunAs); ok {
		d.SecLabel = &seclabelXML{Type: "static", Model: "dac", Relabel: "no", Label: fmt.Sprintf("+%d:+%d", uid, gid)}
	}
	b, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return "", fmt.Errorf("libvirt domain %s: %w", s.name, err)
	}
	return string(b), nil
}

// launcherScript is the domain's <emulator> when QEMU is to run under our hugepage filter
// (see LauncherMain): libvirt execs one path with QEMU's arguments, so the script puts our
// binary in front. Libvirt also runs the emulator to probe QEMU's capabilities; without the
// launcher variable (set only in our domains' <qemu:env>) the script runs QEMU plainly.
func launcherScript(self, qemu string) string {
	return "#!/bin/sh\n" +
		"# Written by cloudlet: runs QEMU for libvirt domains under cloudlet's seccomp filter\n" +
		"# that drops MADV_HUGEPAGE advice on guest RAM.\n" +
		`if [ -n "$` + launcherEnv + `" ]; then exec ` + shellQuote(self) + " " + shellQuote(qemu) + " \"$@\"; fi\n" +
		"exec " + shellQuote(qemu) + " \"$@\"\n"
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// domainName is the libvirt name of a VM: operators see "cloudlet-" and the caller's name.
func domainName(name string) string { return "cloudlet-" + name }

// ramEnv is the launcher variable for a VM's RAM size.
func ramEnv(c Config) map[string]string {
	return map[string]string{launcherEnv: strconv.FormatInt(c.MemoryBytes, 10)}
}
