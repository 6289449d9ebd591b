package vm

import (
	"context"
	"fmt"
	"strings"
)

// Record asks the running QEMU what a snapshot of it will need of the host that resumes it,
// and returns cfg with that filled in: the machine type the machine really is (an alias such as
// q35 becomes pc-q35-7.2, whose device layout later QEMUs keep), and the Platform (QEMU's
// version, the CPU model's features on this machine and accelerator). Call it before Snapshot
// and store what it returns with the snapshot.
func (v *VM) Record(ctx context.Context, cfg Config) (Config, error) {
	var version struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
	}
	if err := v.proc.Execute(ctx, "query-version", nil, &version); err != nil {
		return cfg, fmt.Errorf("record the platform: %w", err)
	}
	var typ string
	if err := v.proc.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &typ); err != nil {
		return cfg, fmt.Errorf("record the platform: machine type: %w", err)
	}
	machine, ok := strings.CutSuffix(typ, "-machine")
	if !ok || machine == "" {
		return cfg, fmt.Errorf("record the platform: machine type %q: want NAME-machine", typ)
	}
	features, err := expandFeatures(ctx, v.proc, cfg.CPU)
	if err != nil {
		return cfg, fmt.Errorf("record the platform: %w", err)
	}
	var cpus []cpuDefinition
	if err := v.proc.Execute(ctx, "query-cpu-definitions", nil, &cpus); err != nil {
		return cfg, fmt.Errorf("record the platform: %w", err)
	}
	p := &Platform{
		QEMU:        fmt.Sprintf("%d.%d.%d", version.QEMU.Major, version.QEMU.Minor, version.QEMU.Micro),
		Accel:       string(v.accel),
		CPUFeatures: features,
	}
	for _, c := range cpus {
		if c.Name == cfg.CPU {
			p.CPUMigrationSafe = c.MigrationSafe
		}
	}
	cfg.Machine, cfg.Platform = machine, p
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("record the platform: %w", err)
	}
	return cfg, nil
}
