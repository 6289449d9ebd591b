package registry

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/overlay"
)

// The artifact types, media types and annotations of cloudlet artifacts.
const (
	ArtifactTypeOverlay = "application/vnd.cloudlet.overlay.v1"
	MediaTypeOverlay    = "application/vnd.cloudlet.overlay.v1.file" // the overlay file, one blob
	// AnnotationOverlayID is the overlay's ID (the SHA-256 of its index, in its header),
	// AnnotationBaseID the base it was made from, AnnotationWorkingSet the bytes of its
	// recorded working set (what a synthesis fetches before the app answers).
	AnnotationOverlayID  = "cloudlet.overlay.id"
	AnnotationBaseID     = "cloudlet.base.id"
	AnnotationWorkingSet = "cloudlet.overlay.working-set-bytes"
)

// ErrBadArtifact is wrapped by the errors for a manifest that is not the artifact wanted.
var ErrBadArtifact = errors.New("not a valid cloudlet artifact")

// maxManifestBytes bounds an artifact manifest read from a registry (they are about 1 KiB).
const maxManifestBytes = 4 << 20

// PushOverlay publishes the overlay file at path as an artifact tagged as ref says. Its
// subject is the base's artifact when that base was pushed to the same repository (base
// push tags it "base-ID"). It returns the artifact manifest's descriptor.
func PushOverlay(ctx context.Context, path string, ref Ref, o Options, p base.Progress) (ocispec.Descriptor, error) {
	if err := ref.ValidateReferenceAsTag(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push to %s: want a tag: %w", ref, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("overlay: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("overlay: %w", err)
	}
	r, err := overlay.Open(f, st.Size(), overlay.Expect{})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("overlay %s: %w", path, err)
	}
	annotations := map[string]string{
		AnnotationOverlayID:  r.ID(),
		AnnotationBaseID:     r.BaseID(),
		AnnotationWorkingSet: strconv.FormatInt(r.Index.WorkingSetBytes(), 10),
	}
	r.Close()
	blob, err := fileDescriptor(ctx, f, st.Size(), MediaTypeOverlay, p)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("overlay %s: %w", path, err)
	}
	blob.Annotations = map[string]string{ocispec.AnnotationTitle: "overlay"}
	repo, err := Repository(ref, o)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := pushBlob(ctx, repo, blob, io.NewSectionReader(f, 0, st.Size()), "push overlay", p); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push overlay %s: %w", path, err)
	}
	var subject *ocispec.Descriptor
	if d, err := repo.Resolve(ctx, BaseTag(annotations[AnnotationBaseID])); err == nil {
		subject = &d
	}
	m := ocispec.Manifest{ArtifactType: ArtifactTypeOverlay, Layers: []ocispec.Descriptor{blob}, Subject: subject, Annotations: annotations}
	return pushManifest(ctx, repo, ref, m, ocispec.DescriptorEmptyJSON, nil)
}

// fileDescriptor hashes f for its descriptor.
func fileDescriptor(ctx context.Context, f *os.File, size int64, mediaType string, p base.Progress) (ocispec.Descriptor, error) {
	p = base.OrNone(p)
	d := digest.Canonical.Digester()
	p.Begin("hash", size)
	_, err := io.Copy(d.Hash(), base.ProgressReader(ctx, io.NewSectionReader(f, 0, size), p))
	p.End()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d.Digest(), Size: size}, nil
}

// pushBlob uploads a blob unless the repository has it already (an interrupted push resumes
// by blob); the registry checks its digest.
func pushBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, r io.Reader, label string, p base.Progress) error {
	ok, err := repo.Blobs().Exists(ctx, desc)
	if err != nil {
		return explain(err)
	}
	if ok {
		return nil
	}
	p = base.OrNone(p)
	p.Begin(label, desc.Size)
	defer p.End()
	if err := repo.Blobs().Push(ctx, desc, base.ProgressReader(ctx, r, p)); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, explain(err))
	}
	return nil
}

// pushManifest uploads the config blob and the image manifest m (OCI 1.1, with an
// artifactType) and tags it as ref says.
func pushManifest(ctx context.Context, repo *remote.Repository, ref Ref, m ocispec.Manifest, config ocispec.Descriptor, configData []byte) (ocispec.Descriptor, error) {
	if configData == nil {
		configData = config.Data
	}
	config.Data = nil
	if err := pushBlob(ctx, repo, config, bytes.NewReader(configData), "push config", nil); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: config: %w", ref, err)
	}
	m.Versioned.SchemaVersion = 2
	m.MediaType = ocispec.MediaTypeImageManifest
	m.Config = config
	raw, err := json.Marshal(m)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	desc.ArtifactType = m.ArtifactType
	if err := repo.PushReference(ctx, desc, bytes.NewReader(raw), ref.Reference.Reference); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", ref, explain(err))
	}
	return desc, nil
}

// fetchManifest reads the image manifest ref names (at most maxManifestBytes, its digest
// checked) and checks its artifact type.
func fetchManifest(ctx context.Context, repo *remote.Repository, ref Ref, artifactType string) (ocispec.Descriptor, ocispec.Manifest, error) {
	var m ocispec.Manifest
	desc, rc, err := repo.FetchReference(ctx, ref.Reference.Reference)
	if err != nil {
		return desc, m, fmt.Errorf("resolve %s: %w", ref, explain(err))
	}
	defer rc.Close()
	if desc.Size > maxManifestBytes {
		return desc, m, fmt.Errorf("%s: manifest of %d bytes, limit %d", ref, desc.Size, maxManifestBytes)
	}
	raw, err := content.ReadAll(rc, desc)
	if err != nil {
		return desc, m, fmt.Errorf("%s: manifest: %w", ref, err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return desc, m, fmt.Errorf("%s: manifest: %w: %w", ref, ErrBadArtifact, err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != artifactType {
		return desc, m, fmt.Errorf("%s: %w: got an artifact of type %q (%s), want %s", ref, ErrBadArtifact, m.ArtifactType, m.MediaType, artifactType)
	}
	return desc, m, nil
}

// Overlay is an overlay artifact, resolved: where its blob is and what its annotations say.
type Overlay struct {
	Ref       Ref
	Manifest  ocispec.Descriptor
	Blob      ocispec.Descriptor  // the overlay file
	Subject   *ocispec.Descriptor // the base's artifact, if the overlay names it
	OverlayID string
	BaseID    string
	// WorkingSetBytes is what the annotation says (0 if it says nothing usable).
	WorkingSetBytes int64
	// URL is the blob's URL at the registry, read with Client: every request starts there,
	// so a redirect to blob storage is fresh each time.
	URL    string
	Client *http.Client
}

// ResolveOverlay reads the overlay artifact ref names and returns its blob's URL with a client
// that authenticates to the registry and follows redirects with checkRedirect (nil: at most 5).
func ResolveOverlay(ctx context.Context, ref Ref, o Options, checkRedirect func(*http.Request, []*http.Request) error) (*Overlay, error) {
	repo, err := Repository(ref, o)
	if err != nil {
		return nil, err
	}
	mctx, cancel := o.manifestContext(ctx)
	desc, m, err := fetchManifest(mctx, repo, ref, ArtifactTypeOverlay)
	cancel()
	if err != nil {
		return nil, o.manifestError(ctx, err)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != MediaTypeOverlay {
		return nil, fmt.Errorf("%s: %w: want one blob of type %s, got %d blobs", ref, ErrBadArtifact, MediaTypeOverlay, len(m.Layers))
	}
	blob := m.Layers[0]
	if err := blob.Digest.Validate(); err != nil || blob.Digest.Algorithm() != digest.SHA256 || blob.Size <= 0 {
		return nil, fmt.Errorf("%s: %w: overlay blob %q of %d bytes: want a sha256 digest and a positive size", ref, ErrBadArtifact, blob.Digest, blob.Size)
	}
	ov := &Overlay{Ref: ref, Manifest: desc, Blob: blob, Subject: m.Subject,
		OverlayID: m.Annotations[AnnotationOverlayID], BaseID: m.Annotations[AnnotationBaseID]}
	for what, id := range map[string]string{"overlay ID": ov.OverlayID, "base ID": ov.BaseID} {
		if b, err := hex.DecodeString(id); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%s: %w: annotation %s %q: want 64 hex digits", ref, ErrBadArtifact, what, id)
		}
	}
	ov.WorkingSetBytes, _ = strconv.ParseInt(m.Annotations[AnnotationWorkingSet], 10, 64)
	ov.URL = BlobURL(ref, o, blob.Digest.String())
	if ov.Client, err = BlobClient(ref, o, checkRedirect); err != nil {
		return nil, err
	}
	return ov, nil
}
