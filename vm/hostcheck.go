package vm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// MismatchError is a resume that this host refuses before QEMU starts: each reason names what
// the snapshot needs and what this host's QEMU lacks.
type MismatchError struct {
	Reasons []string
}

func (e *MismatchError) Error() string { return strings.Join(e.Reasons, "; ") }

// Refusal names what a check was about: "base X needs CPU model Y, which ..." when this host
// lacks something, "base X: ..." when the check itself failed.
func Refusal(what string, err error) error {
	var mm *MismatchError
	if errors.As(err, &mm) {
		return fmt.Errorf("%s %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Check says whether this host can resume a snapshot of cfg: a *MismatchError naming each
// thing it cannot provide, and warnings for what cannot be known (a snapshot that does not
// record its platform, a machine named by an alias).
func (i *HostInfo) Check(cfg Config) (warnings []string, err error) {
	var reasons []string
	p := cfg.Platform
	if p == nil {
		warnings = append(warnings, "the snapshot does not record the QEMU version and CPU features it was made with "+
			"(made by an older cloudlet): a host whose CPU lacks one of them resumes a guest that may crash")
	} else if olderThan(i.QEMU, p.QEMU) {
		reasons = append(reasons, fmt.Sprintf("needs QEMU %s or later (it was made with %s), and this host has QEMU %s",
			majorMinor(p.QEMU), p.QEMU, i.QEMU))
	}
	switch m, ok := i.machine[cfg.Machine]; {
	case !ok:
		reasons = append(reasons, fmt.Sprintf("needs machine type %s, which this host's QEMU %s does not know", cfg.Machine, i.QEMU))
	case m != cfg.Machine:
		warnings = append(warnings, fmt.Sprintf("the snapshot's machine type %s is an alias (here of %s), not a versioned type: "+
			"it may have been another machine where it was made", cfg.Machine, m))
	}
	if r := i.checkCPU(cfg); r != "" {
		reasons = append(reasons, r)
	}
	for _, d := range cfg.Devices {
		if !i.devices[d] {
			reasons = append(reasons, fmt.Sprintf("needs device %s, which this host's QEMU %s does not have", d, i.QEMU))
		}
	}
	if len(reasons) > 0 {
		return warnings, &MismatchError{Reasons: reasons}
	}
	return warnings, nil
}

// checkCPU says what, if anything, keeps this host from giving the guest its CPU: a model QEMU
// does not have, features of the model this host cannot provide under its accelerator, or
// (with a record) features the guest had that this host cannot give any model.
func (i *HostInfo) checkCPU(cfg Config) string {
	def, ok := i.cpus[cfg.CPU]
	if !ok {
		return fmt.Sprintf("needs CPU model %s, which this host's QEMU %s does not have", cfg.CPU, i.QEMU)
	}
	missing := append([]string(nil), def.Unavailable...)
	if p := cfg.Platform; p != nil {
		for _, f := range p.CPUFeatures {
			if !i.maxFeatures[f] {
				missing = append(missing, f)
			}
		}
	}
	if len(missing) == 0 {
		return ""
	}
	r := fmt.Sprintf("needs CPU model %s, which this host's QEMU %s under %s cannot provide: missing features %s",
		cfg.CPU, i.QEMU, accelName(i.Accel), strings.Join(sortUnique(missing), ", "))
	if p := cfg.Platform; p != nil && p.Accel != string(i.Accel) {
		r += fmt.Sprintf(" (it was made under %s)", accelName(Accel(p.Accel)))
	}
	return r
}

func sortUnique(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func accelName(a Accel) string {
	switch a {
	case AccelKVM:
		return "KVM"
	case AccelTCG:
		return "TCG"
	}
	return string(a)
}

// checkHost refuses, before QEMU starts, a resume this host cannot provide; what it cannot know
// it logs.
func checkHost(ctx context.Context, opts Options, accel Accel) error {
	warnings, err := checkWith(ctx, opts, accel)
	for _, w := range warnings {
		logf(opts.Log, "warning: %s\n", w)
	}
	return err
}

func checkWith(ctx context.Context, opts Options, accel Accel) ([]string, error) {
	h := opts.Host
	if h == nil {
		h = NewHost(opts.QEMU)
	}
	info, err := h.Info(ctx, accel)
	if err != nil {
		return nil, fmt.Errorf("check that this host can resume the snapshot: %w", err)
	}
	return info.Check(opts.Config)
}

// CheckResume probes this host (through opts.Host, once per accelerator) and says whether it
// can resume a snapshot of opts.Config, as Resume would, with the accelerator Resume would
// choose. Callers that do much before Resume (a synthesis fetches an overlay) call it first;
// Resume checks again (from opts.Host's answer) and logs the warnings.
func CheckResume(ctx context.Context, opts Options) (warnings []string, err error) {
	accel, _ := chooseAccel(opts.Accel, "/sys/module")
	return checkWith(ctx, opts, accel)
}

// Portability says in words which hosts can resume a snapshot of cfg.
func Portability(cfg Config) string {
	p := cfg.Platform
	if p == nil {
		return fmt.Sprintf("unknown: the base does not record its QEMU version and CPU features (made by an older cloudlet); "+
			"it needs machine type %s and CPU model %s, and a CPU like the one it was made on", cfg.Machine, cfg.CPU)
	}
	s := fmt.Sprintf("any x86-64 host whose QEMU ≥ %s knows machine %s and CPU model %s", majorMinor(p.QEMU), cfg.Machine, cfg.CPU)
	switch {
	case p.CPUMigrationSafe:
		return s + fmt.Sprintf(" and provides its %d features under %s", len(p.CPUFeatures), accelName(Accel(p.Accel)))
	case p.Accel == string(AccelTCG):
		return s + fmt.Sprintf(" and gives it all %d features it had under TCG (%s is TCG's own model, "+
			"the same on every host with the same QEMU, growing with QEMU releases; under KVM it would be the host's CPU)",
			len(p.CPUFeatures), cfg.CPU)
	}
	return s + fmt.Sprintf(" and whose CPU has all %d features it had under %s (%s follows the host's CPU: "+
		"a host of the same CPU generation or newer)", len(p.CPUFeatures), accelName(Accel(p.Accel)), cfg.CPU)
}
