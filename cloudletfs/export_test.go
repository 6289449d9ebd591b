package cloudletfs

import (
	"os"
	"path/filepath"
)

// CrashCopy copies the cache directory's files to dst as a crash of this process at this
// instant would leave them (the kernel keeps every completed write). Syncs and VM writes are
// held off meanwhile, so the copy is one instant; a delivery may run, but it only writes
// chunks that no durable record trusts yet.
func (f *FS) CrashCopy(dst string) error {
	for _, img := range f.images {
		img.syncMu.Lock()
		defer img.syncMu.Unlock()
		img.writeMu.Lock()
		defer img.writeMu.Unlock()
	}
	names := []string{"identity"}
	for _, img := range f.images {
		names = append(names, img.name+".cache", img.name+".presence")
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(f.cfg.Dir, n))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
