package vm

import (
	"fmt"
	"strconv"
	"strings"
)

// Platform is what a snapshot needs of the host that resumes it, recorded when the snapshot is
// taken. The guest read its CPU's features once, at boot, and will not look again: a host whose
// QEMU gives the same model fewer features resumes a guest that faults on its next such
// instruction (the kernel panics Elijah's README warns of). A QEMU that lacks the machine type,
// or is older than the one that wrote the device state, cannot load it. So a resume compares
// this record with what the host's QEMU reports, and refuses before QEMU starts.
type Platform struct {
	// QEMU is the version of the QEMU that took the snapshot, "MAJOR.MINOR.MICRO".
	QEMU string `json:"qemu"`
	// Accel is the accelerator the CPU model was expanded under: the same model has other
	// features under KVM (the host's, plus KVM's paravirtual ones) than under TCG.
	Accel string `json:"accel"`
	// CPUFeatures are the CPUID features of Config.CPU as QEMU expanded it on the snapshot's
	// machine and accelerator (QMP query-cpu-model-expansion, static), sorted.
	CPUFeatures []string `json:"cpu_features"`
	// CPUMigrationSafe is QEMU's word on the model: true for named models (their features
	// are fixed by the model and the machine type), false for max and host, whose features are
	// whatever the host and accelerator offer.
	CPUMigrationSafe bool `json:"cpu_migration_safe"`
}

// Bounds on a Platform read from a manifest or an overlay (both may come from elsewhere).
// QEMU 7.2 knows about 330 CPUID feature names, none longer than 30 bytes; at these bounds a
// config still fits an overlay's index (overlay.MaxConfigLen).
const (
	maxPlatformFeatures  = 512
	maxFeatureNameLen    = 64
	maxVersionStringLen  = 32
	maxPlatformAccelName = 16
)

// Validate reports a record that no QEMU could have written.
func (p *Platform) Validate() error {
	if _, _, err := parseVersion(p.QEMU); err != nil || len(p.QEMU) > maxVersionStringLen {
		return fmt.Errorf("platform: QEMU version %.40q: want MAJOR.MINOR[.MICRO]", p.QEMU)
	}
	if len(p.Accel) > maxPlatformAccelName || (p.Accel != string(AccelKVM) && p.Accel != string(AccelTCG)) {
		return fmt.Errorf("platform: accelerator %.20q: want kvm or tcg", p.Accel)
	}
	if len(p.CPUFeatures) > maxPlatformFeatures {
		return fmt.Errorf("platform: %d CPU features, limit %d", len(p.CPUFeatures), maxPlatformFeatures)
	}
	for i, f := range p.CPUFeatures {
		if !validFeatureName(f) {
			return fmt.Errorf("platform: CPU feature %.70q: want 1 to %d of a-z, 0-9, '.', '_', '-'", f, maxFeatureNameLen)
		}
		if i > 0 && p.CPUFeatures[i-1] >= f {
			return fmt.Errorf("platform: CPU features not sorted and unique at %q", f)
		}
	}
	return nil
}

func validFeatureName(s string) bool {
	if s == "" || len(s) > maxFeatureNameLen {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// parseVersion reads "7.2.22" or "7.2" into major and minor; micro releases keep the
// migration format, so only those two order QEMUs here.
func parseVersion(s string) (major, minor int, err error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR[.MICRO]", s)
	}
	var n [3]int
	for i, p := range parts {
		if n[i], err = strconv.Atoi(p); err != nil || n[i] < 0 || len(p) > 6 {
			return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR[.MICRO]", s)
		}
	}
	return n[0], n[1], nil
}

// olderThan says whether version a is an older release (major.minor) than b.
func olderThan(a, b string) bool {
	amaj, amin, err1 := parseVersion(a)
	bmaj, bmin, err2 := parseVersion(b)
	if err1 != nil || err2 != nil {
		return false
	}
	return amaj < bmaj || amaj == bmaj && amin < bmin
}

// majorMinor is "7.2" of "7.2.22".
func majorMinor(v string) string {
	maj, min, err := parseVersion(v)
	if err != nil {
		return v
	}
	return fmt.Sprintf("%d.%d", maj, min)
}

// PortableCPU is the CPU model a snapshot taken under KVM gets unless its maker names another.
// The host's own model ("host") ties a snapshot to one CPU generation; Westmere (2010) asks for
// x86-64-v2 (SSE4.2, POPCNT, CX16) plus AES-NI and PCLMULQDQ, which every Intel server CPU
// since and every AMD one since Bulldozer (2011) provides, so a base travels to nearly any
// x86-64 cloudlet while TLS and hashing in the guest keep their hardware help. (QEMU 7.2 has
// no x86-64-v2 model of its own; Westmere is the nearest named one.)
const PortableCPU = "Westmere"

// tcgCPU is the CPU model under TCG: max is everything TCG emulates, which is the same on every
// host with the same QEMU, and what the test guest has always run on.
const tcgCPU = "max"

// DefaultCPU is the CPU model a new snapshot gets under accel, when its maker names none.
func DefaultCPU(accel Accel) string {
	if accel == AccelKVM {
		return PortableCPU
	}
	return tcgCPU
}
