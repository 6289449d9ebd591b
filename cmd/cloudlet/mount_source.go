package main

import (
	"context"
	"fmt"
	"io"
	"log"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// mountSource is what a mount serves: a base alone, or an overlay over it, fetched lazily by
// the same fetcher, in the same order and with the same checks as a synthesis.
type mountSource struct {
	cfg      cloudletfs.Config // Files, Capture and Log are the caller's to set
	devstate []byte

	// Set for an overlay only.
	origin    origin.Origin
	reader    *overlay.Reader
	fetcher   *synthesis.Fetcher
	closeBase func()
}

// openMountSource opens the base's resume files and, with o.overlay, the overlay: its index,
// checked against the base, and a fetcher over it and the base's images.
func openMountSource(ctx context.Context, o mountOptions, b *base.Base, cache string) (_ *mountSource, err error) {
	// They go to QEMU: checked against the base's manifest first, as a resume does.
	if err := b.VerifyFiles(ctx, nil, base.DevstateFile, base.KernelFile, base.InitrdFile); err != nil {
		return nil, err
	}
	s := &mountSource{}
	if o.overlay == "" {
		s.cfg = cloudletfs.Config{Dir: cache, Identity: "base " + b.ID, Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size, Base: b.Path(base.DiskFile)},
			{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size, Base: b.Path(base.MemoryFile)},
		}}
		s.devstate, err = readBounded(b.Path(base.DevstateFile), maxBootFileBytes)
		return s, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	src, err := origin.Open(ctx, o.overlay, o.http)
	if err != nil {
		return nil, err
	}
	// The origin becomes a window that streams what a resume needs, as in a synthesis.
	if s.origin, s.reader, err = synthesis.OpenOverlay(ctx, src, b, cache); err != nil {
		return nil, err
	}
	if s.devstate, err = s.reader.Devstate(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.origin, err)
	}
	baseImgs, closeBase, err := b.OpenImages()
	if err != nil {
		return nil, err
	}
	s.closeBase = closeBase
	s.fetcher = synthesis.NewFetcher(s.reader, s.origin, baseImgs, synthesis.FetchOptions{})
	s.cfg = synthesis.CacheConfig(b, s.reader, cache, s.fetcher)
	// A mount keeps what was written through it, across remounts of its cache: unlike a
	// synthesis, which resumes the snapshot again each run. So its caches are its own.
	s.cfg.Identity = "mount " + s.reader.ID()
	return s, nil
}

// overlayID is the overlay's ID, or "" for a base.
func (s *mountSource) overlayID() string {
	if s.reader == nil {
		return ""
	}
	return s.reader.ID()
}

// serve fetches the overlay into fsys until ctx ends, and says on stdout when every chunk is
// local ("complete") or the fetch gave up ("failed: REASON"). After a failure, reads of
// chunks that did not arrive fail (EIO through the mount) instead of waiting, and the mount
// stays, for what did arrive. It returns the failure, if any, once ctx ends.
func (s *mountSource) serve(ctx context.Context, fsys *cloudletfs.FS, stdout io.Writer, l *log.Logger) error {
	if s.fetcher == nil {
		fmt.Fprintln(stdout, "complete")
		<-ctx.Done()
		return nil
	}
	s.fetcher.Start(ctx, fsys)
	select {
	case <-s.fetcher.Complete():
		fmt.Fprintln(stdout, "complete")
	case <-s.fetcher.Failed():
		err := fmt.Errorf("fetch overlay %s: %w", s.origin, s.fetcher.Err())
		fsys.Fail(err)
		l.Printf("cloudlet mount: %v; reads of chunks that did not arrive fail with EIO", err)
		fmt.Fprintf(stdout, "failed: %v\n", err)
		<-ctx.Done()
		return err
	case <-ctx.Done():
	}
	<-ctx.Done()
	return nil
}

// stop stops the fetcher (before the unmount: nothing delivers into a closed FS).
func (s *mountSource) stop() {
	if s.fetcher != nil {
		s.fetcher.Close()
	}
}

// close releases the overlay and the base's images.
func (s *mountSource) close() {
	if s.closeBase != nil {
		s.closeBase()
	}
	if s.reader != nil {
		s.reader.Close()
	}
	if s.origin != nil {
		s.origin.Close()
	}
}
