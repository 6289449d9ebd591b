package cloudletfs

import (
	"fmt"
	"log"
	"os"

	"github.com/cloudlet/cloudlet/chunk"
)

// ImageConfig describes one image of a mount.
type ImageConfig struct {
	Name string // "disk" or "memory": the directory it appears in
	Size int64
	// Base is the base image file; "" means the base is all zeros. It is opened read-only
	// and never written.
	Base string
	// Plan is the state of each chunk before anything is cached: StateBase, StateZero or
	// StatePending. nil means every chunk comes from the base.
	Plan []State
	// Expected returns the digest the overlay promises for chunk c, and false for a chunk it
	// does not store (base or zero). When set, Open checks every chunk a reused cache calls
	// present against it: one whose bytes differ is logged and fetched again (see
	// verifyPresent). nil trusts the cache, for images that no overlay backs (capture, a
	// mount of a base).
	Expected func(c int64) (chunk.Digest, bool)
}

// openImage opens an image's files in fc.Dir. With fc.DiscardModified, chunks the VM wrote in
// an earlier run fall back to their plan state: a synthesis re-run resumes the snapshot again,
// and must not see a disk that a later moment of the previous run wrote.
func openImage(cfg ImageConfig, fc *Config, ev *streams) (_ *Image, err error) {
	n := chunk.Count(cfg.Size)
	if cfg.Size <= 0 {
		return nil, fmt.Errorf("image %s: size %d", cfg.Name, cfg.Size)
	}
	if cfg.Plan != nil && int64(len(cfg.Plan)) != n {
		return nil, fmt.Errorf("image %s: plan has %d chunks, want %d", cfg.Name, len(cfg.Plan), n)
	}
	img := &Image{name: cfg.Name, size: cfg.Size, chunks: n, demander: fc.Demander, events: ev,
		waiters: map[int64]chan struct{}{}, demanded: make([]uint64, (n+63)/64),
		accessed: make([]uint64, (n+63)/64), modified: make([]uint64, (n+63)/64)}
	defer func() {
		if err != nil {
			img.closeFiles()
		}
	}()
	if err := img.openFiles(cfg, fc.Dir); err != nil {
		return nil, err
	}
	plan, err := planStates(cfg, img.base != nil)
	if err != nil {
		return nil, err
	}
	img.state = make([]State, n)
	if cfg.Plan != nil {
		img.overlay, img.touched = make([]uint64, (n+63)/64), make([]uint64, (n+63)/64)
	}
	var discard []int64
	for i := range n {
		if plan[i] == StatePending {
			bitSet(img.overlay, i)
		}
		img.state[i] = img.presence.state(i, plan[i])
		if img.state[i] == StateModified && fc.DiscardModified {
			img.state[i] = plan[i]
			discard = append(discard, i)
		}
	}
	if cfg.Expected != nil {
		bad, err := img.verifyPresent(cfg.Expected, fc.Log)
		if err != nil {
			return nil, err
		}
		for _, c := range bad {
			img.state[c] = plan[c]
		}
		discard = append(discard, bad...)
	}
	for i := range n {
		if img.state[i].cached() {
			img.stats.present.Add(1)
		}
		if img.state[i] == StatePending {
			img.stats.pending.Add(1)
		}
	}
	if err := img.presence.forget(discard); err != nil {
		return nil, fmt.Errorf("image %s: %w", cfg.Name, err)
	}
	return img, nil
}

// openFiles opens the base read-only, and the cache file and presence map in dir.
func (img *Image) openFiles(cfg ImageConfig, dir string) (err error) {
	if cfg.Base != "" {
		if img.base, err = os.Open(cfg.Base); err != nil {
			return fmt.Errorf("image %s: base: %w", cfg.Name, err)
		}
		st, err := img.base.Stat()
		if err != nil {
			return fmt.Errorf("image %s: base: %w", cfg.Name, err)
		}
		if st.Size() != cfg.Size {
			return fmt.Errorf("image %s: base %s has %d bytes, want %d", cfg.Name, cfg.Base, st.Size(), cfg.Size)
		}
	}
	cachePath := dir + "/" + cfg.Name + ".cache"
	if img.cache, err = os.OpenFile(cachePath, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return fmt.Errorf("image %s: cache: %w", cfg.Name, err)
	}
	if err := img.cache.Truncate(cfg.Size); err != nil {
		return fmt.Errorf("image %s: cache: %w", cfg.Name, err)
	}
	if img.presence, err = openPresence(dir+"/"+cfg.Name+".presence", chunk.Count(cfg.Size)); err != nil {
		return fmt.Errorf("image %s: %w", cfg.Name, err)
	}
	return nil
}

// planStates checks the plan and returns it with base chunks of an image without a base
// file turned into zero chunks.
func planStates(cfg ImageConfig, haveBase bool) ([]State, error) {
	n := chunk.Count(cfg.Size)
	plan := make([]State, n)
	for i := range n {
		p := StateBase
		if cfg.Plan != nil {
			p = cfg.Plan[i]
			if p != StateBase && p != StateZero && p != StatePending {
				return nil, fmt.Errorf("image %s: chunk %d: plan state %v", cfg.Name, i, p)
			}
		}
		if p == StateBase && !haveBase {
			p = StateZero
		}
		plan[i] = p
	}
	return plan, nil
}

// defaultLog is where a Config without Log writes.
func defaultLog() *log.Logger { return log.New(os.Stderr, "", log.LstdFlags) }
