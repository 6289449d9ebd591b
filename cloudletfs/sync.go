package cloudletfs

import "fmt"

// Sync makes every cached chunk durable: the cache file is fsynced, then the presence map
// records the chunks. Until then, a crash makes them pending (or base) again.
func (img *Image) Sync() error {
	img.syncMu.Lock()
	defer img.syncMu.Unlock()
	img.mu.Lock()
	dirty := img.dirty
	img.dirty = nil
	img.mu.Unlock()
	if len(dirty) == 0 {
		return nil
	}
	// Every chunk in dirty had its bytes written before it was queued, so this fsync covers
	// them. Only chunks still in the state they were queued with are recorded: a present
	// chunk that the VM has written since may have the VM's bytes in this very fsync.
	err := img.cache.Sync()
	if err == nil {
		err = img.presence.record(func() []dirtyChunk { return img.latest(dirty) })
	}
	if err != nil {
		img.mu.Lock()
		img.dirty = append(dirty, img.dirty...)
		img.mu.Unlock()
		return fmt.Errorf("image %s: make cache durable: %w", img.name, err)
	}
	return nil
}

// latest returns the entries of dirty whose chunk is still in the state it was queued with.
func (img *Image) latest(dirty []dirtyChunk) []dirtyChunk {
	img.mu.Lock()
	defer img.mu.Unlock()
	keep := make([]dirtyChunk, 0, len(dirty))
	for _, d := range dirty {
		if img.state[d.c] == d.s {
			keep = append(keep, d)
		}
	}
	return keep
}
