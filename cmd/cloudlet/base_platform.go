package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/vm"
)

// hostVerdict is whether this host can resume a base, as 'base show' tells it.
type hostVerdict struct {
	Accel     string   `json:"accel"`
	QEMU      string   `json:"qemu,omitempty"`
	CanResume bool     `json:"can_resume"`
	Reasons   []string `json:"reasons,omitempty"`  // why not
	Warnings  []string `json:"warnings,omitempty"` // what cannot be known
	// ProbeError is set when QEMU could not be asked; CanResume is then false.
	ProbeError string `json:"probe_error,omitempty"`
}

// checkHere asks this host's QEMU (through host), under the accelerator a resume would use,
// whether it can resume b.
func checkHere(ctx context.Context, host *vm.Host, b *base.Base, want vm.Accel) hostVerdict {
	accel, _ := vm.ChooseAccel(want)
	v := hostVerdict{Accel: string(accel)}
	info, err := host.Info(ctx, accel)
	if err != nil {
		v.ProbeError = err.Error()
		return v
	}
	v.QEMU = info.QEMU
	warnings, err := info.Check(b.Manifest.VM)
	v.Warnings = warnings
	var mm *vm.MismatchError
	switch {
	case errors.As(err, &mm):
		v.Reasons = mm.Reasons
	case err != nil:
		v.Reasons = []string{err.Error()}
	default:
		v.CanResume = true
	}
	return v
}

// showPlatform writes what a base needs of a host, and this host's verdict.
func showPlatform(w io.Writer, c vm.Config, here hostVerdict) {
	if p := c.Platform; p != nil {
		fmt.Fprintf(w, "Made on:  QEMU %s under %s; CPU %s with %d features: %s\n", p.QEMU, p.Accel, c.CPU,
			len(p.CPUFeatures), strings.Join(p.CPUFeatures, " "))
	}
	fmt.Fprintf(w, "Resumes:  on %s\n", vm.Portability(c))
	switch {
	case here.ProbeError != "":
		fmt.Fprintf(w, "Here:     unknown: %s\n", here.ProbeError)
	case here.CanResume && len(here.Warnings) > 0:
		fmt.Fprintf(w, "Here:     yes, as far as can be told: this host (QEMU %s under %s) has what the base records\n", here.QEMU, here.Accel)
	case here.CanResume:
		fmt.Fprintf(w, "Here:     yes, this host can resume it (QEMU %s under %s)\n", here.QEMU, here.Accel)
	default:
		fmt.Fprintf(w, "Here:     no, this host (QEMU %s under %s) cannot resume it:\n", here.QEMU, here.Accel)
		for _, r := range here.Reasons {
			fmt.Fprintf(w, "  - it %s\n", r)
		}
	}
	for _, wn := range here.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", wn)
	}
}

// warnIfNotHere tells, after a base arrives from elsewhere, whether this host could not
// resume it: better now than when a synthesis is asked of it.
func warnIfNotHere(ctx context.Context, host *vm.Host, b *base.Base, stderr io.Writer) {
	here := checkHere(ctx, host, b, vm.AccelAuto)
	if here.ProbeError != "" || here.CanResume {
		return
	}
	fmt.Fprintf(stderr, "warning: this host (QEMU %s under %s) cannot resume base %s: it %s\n",
		here.QEMU, here.Accel, b.ID, strings.Join(here.Reasons, "; it "))
}
