package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/registry"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// registryFlags are the flags of every command that talks to an OCI registry.
func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "registry-user", EnvVars: []string{"CLOUDLET_REGISTRY_USER"}, Usage: "registry user name (default: the docker config file's credentials)"},
		&cli.StringFlag{Name: "registry-password", EnvVars: []string{"CLOUDLET_REGISTRY_PASSWORD"}, Usage: "registry password or token (better in the environment than on the command line)"},
		&cli.StringFlag{Name: "docker-config", Usage: "docker config file with registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)"},
		&cli.BoolFlag{Name: "plain-http", Usage: "talk to the registry over plain HTTP (only on a network you trust)"},
	}
}

func registryOptions(c *cli.Context) registry.Options {
	return registry.Options{PlainHTTP: c.Bool("plain-http"), Username: c.String("registry-user"),
		Password: c.String("registry-password"), DockerConfig: c.String("docker-config")}
}

func overlayPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "publish an overlay to an OCI registry",
		ArgsUsage: "FILE REGISTRY/REPOSITORY:TAG",
		Description: "The overlay becomes an artifact of type " + registry.ArtifactTypeOverlay + " whose one blob is the\n" +
			"overlay file, so that a cloudlet reads it by range ('cloudlet synthesis BASE oci://REF'). Its\n" +
			"annotations name the overlay ID, the base ID and the working set's size; if the base was pushed\n" +
			"to the same repository ('cloudlet base push'), the overlay names it as its subject, and\n" +
			"'synthesis --pull-base' can fetch it.",
		Flags: registryFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("%w: overlay push takes a file and a reference", errUsage)
			}
			ref, err := registry.ParseRef(c.Args().Get(1))
			if err != nil {
				return err
			}
			desc, err := registry.PushOverlay(c.Context, c.Args().Get(0), ref, registryOptions(c), newProgress(c.App.ErrWriter))
			if err != nil {
				return err
			}
			return printPushed(c, ref, desc.Digest.String())
		},
	}
}

func basePushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "publish a base to an OCI registry",
		ArgsUsage: "ID REGISTRY/REPOSITORY:TAG",
		Description: "The base becomes an artifact of type " + registry.ArtifactTypeBase + ": its config is the\n" +
			"base's manifest (whose digest is the base ID), its blobs are the base's files. It is also\n" +
			"tagged base-ID, where overlays pushed to the same repository find it. Files the registry has\n" +
			"already are not sent again.",
		Flags: registryFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("%w: base push takes a base ID and a reference", errUsage)
			}
			ref, err := registry.ParseRef(c.Args().Get(1))
			if err != nil {
				return err
			}
			_, b, err := openBase(globalsOf(c), c.Args().Get(0))
			if err != nil {
				return err
			}
			desc, err := registry.PushBase(c.Context, b, ref, registryOptions(c), newProgress(c.App.ErrWriter))
			if err != nil {
				return err
			}
			return printPushed(c, ref, desc.Digest.String())
		},
	}
}

func basePullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "add a base from an OCI registry",
		ArgsUsage: "REGISTRY/REPOSITORY(:TAG|@sha256:DIGEST)",
		Description: "Every file is checked against the base's manifest, whose digest is the base ID. Files are\n" +
			"downloaded into HOME/pulls first: a pull that broke off resumes where it stopped. A read that\n" +
			"gets no byte for 30 s is retried from where it stopped, for as long as retries make progress.",
		Flags: append(registryFlags(),
			&cli.DurationFlag{Name: "retry-for", Value: 2 * time.Minute, Usage: "how long to retry a registry that makes no progress before giving up (a slow but moving link never gives up)"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%w: base pull takes one reference", errUsage)
			}
			ref, err := registry.ParseRef(c.Args().First())
			if err != nil {
				return err
			}
			s, err := openStore(globalsOf(c))
			if err != nil {
				return err
			}
			o := registryOptions(c)
			b, isNew, err := registry.PullBase(c.Context, s, ref, o, baseBlobs(s, o, c.Duration("retry-for")), newProgress(c.App.ErrWriter))
			if err != nil {
				return err
			}
			return printImported(globalsOf(c), b, isNew, c.App.Writer, c.App.ErrWriter)
		},
	}
}

func printPushed(c *cli.Context, ref registry.Ref, digest string) error {
	if globalsOf(c).json {
		return json.NewEncoder(c.App.Writer).Encode(struct {
			Ref    string `json:"ref"`
			Digest string `json:"digest"`
		}{ref.String(), digest})
	}
	fmt.Fprintf(c.App.ErrWriter, "pushed %s\n", ref)
	fmt.Fprintf(c.App.Writer, "%s/%s@%s\n", ref.Registry, ref.Repository, digest)
	return nil
}

func printImported(g globals, b *base.Base, isNew bool, stdout, stderr io.Writer) error {
	if g.json {
		return json.NewEncoder(stdout).Encode(baseJSON(b))
	}
	if isNew {
		fmt.Fprintf(stderr, "added base %s\n", b.ID)
	} else {
		fmt.Fprintf(stderr, "base %s is already here\n", b.ID)
	}
	fmt.Fprintln(stdout, b.ID)
	return nil
}

// baseBlobs reads the files of a base being pulled: a read that gets no byte for the idle
// timeout is retried from where it stopped, until retryFor passes without progress. A
// registry that does not answer ranges is downloaded whole, into the pulls directory.
func baseBlobs(s *base.Store, o registry.Options, retryFor time.Duration) registry.OpenBlob {
	return origin.RegistryBlobs(origin.HTTPOptions{RetryFor: retryFor,
		OCI: origin.OCIOptions{Registry: o, FullDownload: true, SpoolDir: filepath.Join(s.Home(), "pulls")}})
}

// pullBaseFor makes sure the base id (or prefix) of a synthesis from the oci:// source src is
// in the store, pulling it from the overlay's subject if it is not.
func pullBaseFor(ctx context.Context, g globals, id, src string, o registry.Options, retryFor time.Duration, stderr io.Writer) error {
	s, err := openStore(g)
	if err != nil {
		return err
	}
	if _, err := s.Get(id); err == nil {
		return nil
	}
	ref, err := registry.ParseRef(src)
	if err != nil {
		return err
	}
	ov, err := registry.ResolveOverlay(ctx, ref, o, nil)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(ov.BaseID, id) {
		return fmt.Errorf("overlay %s is for base %s, not %s", ref, ov.BaseID, id)
	}
	if ov.Subject == nil {
		return fmt.Errorf("--pull-base: overlay %s names no base artifact (push the base to the same repository before the overlay, or pull it with 'cloudlet base pull')", ref)
	}
	baseRef := ref
	baseRef.Reference.Reference = ov.Subject.Digest.String()
	b, _, err := registry.PullBase(ctx, s, baseRef, o, baseBlobs(s, o, retryFor), newProgress(stderr))
	if err != nil {
		return fmt.Errorf("--pull-base: %w", err)
	}
	if b.ID != ov.BaseID {
		return fmt.Errorf("--pull-base: the subject of %s is base %s, but the overlay is for %s", ref, b.ID, ov.BaseID)
	}
	fmt.Fprintf(stderr, "pulled base %s from %s\n", b.ID, baseRef)
	return nil
}
