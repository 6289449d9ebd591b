package cloudletfs

import (
	"fmt"
	"time"
)

// Fail says that no pending chunk will ever come (the fetch gave up: origin gone, corrupt
// blob). Every reader waiting for a pending chunk, and every later read that needs one, gets
// an error that wraps err (EIO through the mount, logged with err), instead of waiting
// forever. Chunks that are readable stay readable. The first call's err is kept.
func (f *FS) Fail(err error) {
	for _, img := range f.images {
		img.fail(err)
	}
}

// fail records err and wakes every waiter: waitReadable then finds the failure.
func (img *Image) fail(err error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.failed != nil {
		return
	}
	img.failed = err
	for c, ch := range img.waiters {
		close(ch)
		delete(img.waiters, c)
	}
}

// failedLocked is the error for a read that needs pending chunk c after Fail, or nil.
func (img *Image) failedLocked(c int64) error {
	if img.failed == nil || img.state[c] != StatePending {
		return nil
	}
	return fmt.Errorf("image %s: chunk %d will not come: %w", img.name, c, img.failed)
}

// noteStall counts the time since stalled (if set) as time readers waited.
func (img *Image) noteStall(stalled time.Time) {
	if !stalled.IsZero() {
		img.stats.stallNanos.Add(int64(time.Since(stalled)))
	}
}
