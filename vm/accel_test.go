package vm

import (
	"os"
	"path/filepath"
	"testing"
)

func TestChooseAccel(t *testing.T) {
	tests := []struct {
		name    string
		want    Accel
		modules []string
		got     Accel
	}{
		{"forced tcg", AccelTCG, []string{"kvm_intel"}, AccelTCG},
		{"forced kvm", AccelKVM, nil, AccelKVM},
		{"no hardware module", AccelAuto, []string{"kvm"}, AccelTCG},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, m := range tc.modules {
				os.Mkdir(filepath.Join(dir, m), 0o755)
			}
			if got, why := chooseAccel(tc.want, dir); got != tc.got || why == "" {
				t.Fatalf("chooseAccel = %q (%q), want %q", got, why, tc.got)
			}
		})
	}
}
