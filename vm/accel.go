package vm

import (
	"fmt"
	"os"
)

// Accel names a QEMU accelerator.
type Accel string

const (
	AccelAuto Accel = ""
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// ParseAccel reads the --accel flag: auto, kvm or tcg.
func ParseAccel(s string) (Accel, error) {
	switch s {
	case "", "auto":
		return AccelAuto, nil
	case "kvm":
		return AccelKVM, nil
	case "tcg":
		return AccelTCG, nil
	}
	return "", fmt.Errorf("accelerator %q: want auto, kvm or tcg", s)
}

// ChooseAccel resolves AccelAuto as a start would, with the reason.
func ChooseAccel(want Accel) (Accel, string) { return chooseAccel(want, "/sys/module") }

// chooseAccel resolves AccelAuto. /dev/kvm alone is not enough: some hosts expose a
// paravirtual KVM that cannot run a stock guest kernel. Only the hardware modules (VMX or
// SVM) are trusted. sysModule is /sys/module on a real host.
func chooseAccel(want Accel, sysModule string) (Accel, string) {
	if want != AccelAuto {
		return want, "requested with --accel"
	}
	for _, mod := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(sysModule + "/" + mod); err == nil {
			if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
				f.Close()
				return AccelKVM, mod + " is loaded"
			}
			return AccelTCG, mod + " is loaded but /dev/kvm cannot be opened; using TCG (slow)"
		}
	}
	return AccelTCG, "no hardware KVM (kvm_intel or kvm_amd) is loaded; using TCG (slow)"
}
