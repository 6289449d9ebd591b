package registry

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/cloudlet/cloudlet/base"
)

// The types of a base artifact: its config blob is the base's manifest.json, byte for byte,
// so the config's digest is the base ID; each of its blobs is one file of the base, named by
// its title annotation, with the digest the manifest records for that file.
const (
	ArtifactTypeBase      = "application/vnd.cloudlet.base.v1"
	MediaTypeBaseManifest = "application/vnd.cloudlet.base.manifest.v1+json"
	MediaTypeBaseFile     = "application/vnd.cloudlet.base.file.v1"
)

// BaseTag is the tag a pushed base also gets in its repository, so that an overlay pushed
// there later finds it for its subject.
func BaseTag(id string) string { return "base-" + id }

// PushBase publishes base b as an artifact tagged as ref says (and as BaseTag). Blobs the
// repository has already are not sent again, so an interrupted push resumes by file.
func PushBase(ctx context.Context, b *base.Base, ref Ref, o Options, p base.Progress) (ocispec.Descriptor, error) {
	if err := ref.ValidateReferenceAsTag(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push to %s: want a tag: %w", ref, err)
	}
	raw, err := os.ReadFile(b.Path(base.ManifestFile))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("base %s: %w", b.ID, err)
	}
	repo, err := Repository(ref, o)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var layers []ocispec.Descriptor
	for _, name := range fileNames(b.Manifest) {
		desc, err := fileBlob(name, b.Manifest.Files[name])
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("base %s: %w", b.ID, err)
		}
		if err := pushFile(ctx, repo, desc, b.Path(name), p); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push base %s: %s: %w", b.ID, name, err)
		}
		layers = append(layers, desc)
	}
	config := content.NewDescriptorFromBytes(MediaTypeBaseManifest, raw)
	m := ocispec.Manifest{ArtifactType: ArtifactTypeBase, Layers: layers,
		Annotations: map[string]string{AnnotationBaseID: b.ID, ocispec.AnnotationTitle: b.Manifest.Name}}
	desc, err := pushManifest(ctx, repo, ref, m, config, raw)
	if err != nil {
		return desc, err
	}
	if tag := BaseTag(b.ID); ref.Reference.Reference != tag {
		if err := repo.Tag(ctx, desc, tag); err != nil {
			return desc, fmt.Errorf("tag %s: %w", tag, explain(err))
		}
	}
	return desc, nil
}

func pushFile(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, path string, p base.Progress) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// A file that changed since the manifest was written fails the registry's digest check.
	return pushBlob(ctx, repo, desc, io.NewSectionReader(f, 0, desc.Size), "push "+filepath.Base(path), p)
}

// fileBlob is the descriptor of a base's file, from its manifest entry.
func fileBlob(name string, f base.File) (ocispec.Descriptor, error) {
	d := digest.NewDigestFromEncoded(digest.SHA256, f.SHA256)
	if err := d.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: sha256 %q: %w", name, f.SHA256, err)
	}
	return ocispec.Descriptor{MediaType: MediaTypeBaseFile, Digest: d, Size: f.Size,
		Annotations: map[string]string{ocispec.AnnotationTitle: name}}, nil
}

func fileNames(m *base.Manifest) []string {
	var names []string
	for name := range m.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// PullBase adds the base that ref names to store, and returns it with whether it was new. The
// config blob is the base's manifest (its digest checked, so it is the base ID); every file
// is checked against the digest that manifest records. Files are downloaded into
// HOME/pulls/ID first, read with open, and a pull that broke off resumes from the bytes it has.
func PullBase(ctx context.Context, store *base.Store, ref Ref, o Options, open OpenBlob, p base.Progress) (*base.Base, bool, error) {
	repo, err := Repository(ref, o)
	if err != nil {
		return nil, false, err
	}
	m, raw, err := fetchBaseManifest(ctx, repo, ref, o)
	if err != nil {
		return nil, false, err
	}
	bm, id, err := base.ParseManifest(raw)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", ref, err)
	}
	if b, err := store.Get(id); err == nil && b.ID == id {
		return b, false, nil
	}
	// The files are downloaded, then copied into the store: room for them is checked before
	// the download (their holes included), and again before the copy.
	if err := store.CheckRoom(bm); err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", ref, err)
	}
	dir := filepath.Join(store.Home(), "pulls", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", ref, err)
	}
	for _, name := range fileNames(bm) {
		want, err := fileBlob(name, bm.Files[name])
		if err != nil {
			return nil, false, fmt.Errorf("%s: base %s: %w", ref, id, err)
		}
		if err := checkLayer(m.Layers, want); err != nil {
			return nil, false, fmt.Errorf("%s: base %s: %w", ref, id, err)
		}
		if err := download(ctx, open, ref, want, filepath.Join(dir, name), p); err != nil {
			return nil, false, fmt.Errorf("pull %s: %s: %w", ref, name, err)
		}
	}
	b, isNew, err := store.ImportFiles(ctx, raw, func(name string) (io.ReadCloser, error) {
		return os.Open(filepath.Join(dir, name))
	}, p)
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", ref, err)
	}
	os.RemoveAll(dir)
	return b, isNew, nil
}

// fetchBaseManifest reads the artifact's manifest and its config, the base's manifest, each
// within o's manifest timeout.
func fetchBaseManifest(ctx context.Context, repo *remote.Repository, ref Ref, o Options) (ocispec.Manifest, []byte, error) {
	mctx, cancel := o.manifestContext(ctx)
	defer cancel()
	_, m, err := fetchManifest(mctx, repo, ref, ArtifactTypeBase)
	if err != nil {
		return m, nil, o.manifestError(ctx, err)
	}
	if m.Config.MediaType != MediaTypeBaseManifest || m.Config.Size <= 0 || m.Config.Size > maxManifestBytes {
		return m, nil, fmt.Errorf("%s: config of type %q and %d bytes: want %s of at most %d", ref, m.Config.MediaType, m.Config.Size, MediaTypeBaseManifest, maxManifestBytes)
	}
	raw, err := content.FetchAll(mctx, repo, m.Config)
	if err != nil {
		return m, nil, fmt.Errorf("%s: base manifest %s: %w", ref, m.Config.Digest, o.manifestError(ctx, explain(err)))
	}
	return m, raw, nil
}

// checkLayer finds the artifact's blob for a file of the base, which must have the file's
// digest and size.
func checkLayer(layers []ocispec.Descriptor, want ocispec.Descriptor) error {
	name := want.Annotations[ocispec.AnnotationTitle]
	for _, l := range layers {
		if l.Annotations[ocispec.AnnotationTitle] != name {
			continue
		}
		if l.Digest != want.Digest || l.Size != want.Size {
			return fmt.Errorf("blob for %s: got %s of %d bytes, want %s of %d bytes (the base manifest's)", name, l.Digest, l.Size, want.Digest, want.Size)
		}
		return nil
	}
	return fmt.Errorf("the artifact has no blob for %s", name)
}
