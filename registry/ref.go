package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// Scheme prefixes a reference where a file or URL could also stand: oci://REGISTRY/REPO:TAG.
const Scheme = "oci://"

// Ref names an artifact: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST, with
// or without the oci:// prefix.
type Ref struct {
	registry.Reference
}

// ParseRef parses s; a tag or a digest is required (there is no "latest" by default).
func ParseRef(s string) (Ref, error) {
	r, err := registry.ParseReference(strings.TrimPrefix(s, Scheme))
	if err != nil {
		return Ref{}, fmt.Errorf("reference %q: %w", s, err)
	}
	if r.Reference == "" {
		return Ref{}, fmt.Errorf("reference %q: want REGISTRY/REPOSITORY:TAG or @sha256:DIGEST", s)
	}
	return Ref{r}, nil
}

// String is the reference without the oci:// prefix.
func (r Ref) String() string { return r.Reference.String() }

// Options say how to reach a registry.
type Options struct {
	// PlainHTTP talks HTTP instead of HTTPS: only for a registry on a trusted network.
	PlainHTTP bool
	// Username and Password, if set, are used instead of the docker config file.
	Username, Password string
	// DockerConfig is the docker config file with credentials; "" is the usual one
	// ($DOCKER_CONFIG/config.json, else ~/.docker/config.json). A missing file means none.
	DockerConfig string
	// Transport carries every request, to the registry and to where it redirects; nil is a
	// default one. A server gives one whose dialer refuses its own network.
	Transport http.RoundTripper
	// ManifestTimeout bounds the fetch of a manifest or a config, token included (0:
	// DefaultManifestTimeout): they are a few KiB, and a registry that stops sending one must
	// not hang a pull. Blobs are read with idle timeouts instead (see OpenBlob).
	ManifestTimeout time.Duration
}

// DefaultManifestTimeout is ManifestTimeout's default.
const DefaultManifestTimeout = 60 * time.Second

func (o Options) manifestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, cmp.Or(o.ManifestTimeout, DefaultManifestTimeout))
}

// manifestError names the timeout when it, not the caller, ended a fetch.
func (o Options) manifestError(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("%w (no complete answer within %v)", err, cmp.Or(o.ManifestTimeout, DefaultManifestTimeout))
	}
	return err
}

// credential resolves credentials for host: the explicit ones for the registry's host only,
// else the docker config file's.
func (o Options) credential(host string) (auth.CredentialFunc, error) {
	if o.Username != "" || o.Password != "" {
		return auth.StaticCredential(host, auth.Credential{Username: o.Username, Password: o.Password}), nil
	}
	var store credentials.Store
	var err error
	if o.DockerConfig != "" {
		store, err = credentials.NewStore(o.DockerConfig, credentials.StoreOptions{})
	} else {
		store, err = credentials.NewStoreFromDocker(credentials.StoreOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	return credentials.Credential(store), nil
}

// maxRedirects bounds the redirects of one request (a blob GET goes to storage once).
const maxRedirects = 5

func limitRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("more than %d redirects", maxRedirects)
	}
	return nil
}

func (o Options) transport() http.RoundTripper {
	if o.Transport != nil {
		return o.Transport
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 60 * time.Second
	return t
}

// authClient is an auth-decorated client for ref's registry over the inner client.
func (o Options) authClient(ref Ref, inner *http.Client) (*auth.Client, error) {
	cred, err := o.credential(ref.Host())
	if err != nil {
		return nil, err
	}
	return &auth.Client{Client: inner, Credential: cred, Cache: auth.NewCache()}, nil
}

// Repository opens the repository that ref names.
func Repository(ref Ref, o Options) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", ref, err)
	}
	repo.PlainHTTP = o.PlainHTTP
	c, err := o.authClient(ref, &http.Client{Transport: o.transport(), CheckRedirect: limitRedirects})
	if err != nil {
		return nil, err
	}
	repo.Client = c
	return repo, nil
}

// BlobClient returns an HTTP client that authenticates to ref's registry (pull scope) and
// follows redirects with checkRedirect (nil: at most 5), sending credentials to the registry
// only, never to where it redirects (blob storage gets the presigned URL alone).
func BlobClient(ref Ref, o Options, checkRedirect func(*http.Request, []*http.Request) error) (*http.Client, error) {
	// The inner client stops at each redirect and hands it to the outer one, so that each hop
	// goes through the auth client for its own host.
	inner := &http.Client{Transport: o.transport(), CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	c, err := o.authClient(ref, inner)
	if err != nil {
		return nil, err
	}
	if checkRedirect == nil {
		checkRedirect = limitRedirects
	}
	return &http.Client{Transport: &authTransport{c: c, ref: ref}, CheckRedirect: checkRedirect}, nil
}

type authTransport struct {
	c   *auth.Client
	ref Ref
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := auth.AppendRepositoryScope(req.Context(), t.ref.Reference, auth.ActionPull)
	return t.c.Do(req.WithContext(ctx))
}

// BlobURL is the URL of a blob of ref's repository.
func BlobURL(ref Ref, o Options, digest string) string {
	scheme := "https"
	if o.PlainHTTP {
		scheme = "http"
	}
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, ref.Host(), ref.Repository, digest)
}

// explain turns a registry's error into one that names the usual causes.
func explain(err error) error {
	var resp *errcode.ErrorResponse
	status := 0
	if errors.As(err, &resp) {
		status = resp.StatusCode
	}
	switch {
	case errors.Is(err, errdef.ErrNotFound) || status == http.StatusNotFound:
		return fmt.Errorf("not found in the registry: %w", err)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"): // net/http has no type for it
		return fmt.Errorf("the registry speaks plain HTTP (if it is on a network you trust, give --plain-http): %w", err)
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("the registry wants credentials and none were found (give --registry-user and --registry-password, or log in with docker or oras): %w", err)
	case status == http.StatusUnauthorized:
		return fmt.Errorf("the registry refused the credentials (check --registry-user/--registry-password or the docker config): %w", err)
	case status == http.StatusForbidden:
		return fmt.Errorf("the registry denied access: %w", err)
	}
	return err
}
