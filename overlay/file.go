package overlay

import (
	"context"
	"fmt"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
)

// WriteFile builds an overlay (see Write) into the file at path, atomically: a crash or an
// error never leaves a file there that looks whole, and the finished file is durable and
// private (0600) before WriteFile returns. Blobs are staged in tmpDir.
func WriteFile(ctx context.Context, path, tmpDir string, m Meta, devstate []byte, entries []Entry, order []int, read ReadChunk) (Summary, error) {
	f, err := atomicfile.Create(path)
	if err != nil {
		return Summary{}, fmt.Errorf("overlay output: %w", err)
	}
	defer f.Abort()
	s, err := Write(ctx, f, tmpDir, m, devstate, entries, order, read)
	if err != nil {
		return s, err
	}
	if err := f.Commit(); err != nil {
		return s, fmt.Errorf("overlay output: %w", err)
	}
	return s, nil
}
