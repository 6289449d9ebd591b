package origin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloudlet/cloudlet/registry"
)

// RegistryBlobs opens registry blobs (a base's files, for registry.PullBase) as HTTP origins
// with opts: range requests with the registry's auth and redirects, an idle timeout on every
// body read, and retries that resume where a read stopped for as long as they make progress.
// A registry that does not answer ranges is read whole into a spool file when
// opts.OCI.FullDownload says so.
func RegistryBlobs(opts HTTPOptions) registry.OpenBlob {
	return func(ctx context.Context, ref registry.Ref, desc ocispec.Descriptor) (registry.BlobReader, error) {
		ropts := opts.OCI.Registry
		if ropts.Transport != nil && opts.Guard != nil {
			return nil, fmt.Errorf("blob %s of %s: a guard needs the origin's own transport, not a given one", desc.Digest, ref)
		}
		if ropts.Transport == nil {
			ropts.Transport = newHTTPClient(opts.Guard).Transport
		}
		name := fmt.Sprintf("blob %s of %s", desc.Digest, ref)
		client, err := registry.BlobClient(ref, ropts, checkRedirect)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		url := registry.BlobURL(ref, ropts, desc.Digest.String())
		var o Origin
		o, err = openBlob(ctx, url, client, name, opts)
		if errors.Is(err, ErrNoRanges) && opts.OCI.FullDownload {
			ov := &registry.Overlay{Ref: ref, Blob: desc, URL: url, Client: client}
			o, err = downloadBlob(ctx, ov, name, opts.OCI.SpoolDir, cmp.Or(opts.IdleTimeout, defaultIdleTimeout))
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if o.Size() != desc.Size {
			o.Close()
			return nil, fmt.Errorf("%s has %d bytes, the manifest says %d", name, o.Size(), desc.Size)
		}
		return progressOrigin{o}, nil
	}
}

// openBlob reads a registry blob at url by range requests with the registry's client. Each
// request starts at the registry, so that a presigned redirect that expired is refreshed.
func openBlob(ctx context.Context, url string, client *http.Client, name string, opts HTTPOptions) (Origin, error) {
	opts.Client, opts.Guard, opts.retryDenied = client, nil, true
	o, err := NewHTTP(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	h := o.(*httpOrigin)
	// A blob fetched by digest cannot change, and blob storage behind a redirect may answer
	// each request with other validators: the digest pins it, not an ETag.
	h.validator, h.byETag, h.name = "", false, name
	return h, nil
}

// progressOrigin reads any origin with progress.
type progressOrigin struct{ Origin }

func (o progressOrigin) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	return ReadProgress(ctx, o.Origin, p, off, progress)
}
