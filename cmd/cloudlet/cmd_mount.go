package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os/user"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

type mountOptions struct {
	globals
	id          string
	mountpoint  string
	cache       string
	capture     bool
	readAheadKB int
	user        *cloudletfs.User // who may open the images besides us; nil: nobody
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "serve a base's disk and memory images through cloudletfs",
		UsageText: "cloudlet mount BASE_ID MOUNTPOINT [--cache DIR] [--capture] [--user NAME|UID]",
		Description: "MOUNTPOINT gets disk/image, memory/image, stats/ and streams/. Writes go to the cache,\n" +
			"never to the base. It runs until SIGINT or SIGTERM, then unmounts. Once it serves, it prints\n" +
			"one line 'ready MOUNTPOINT' on stdout, for scripts to wait on.\n" +
			"The images are mode 0600: only this user can open them, or the one --user names (the user a\n" +
			"QEMU on them runs as), who must be able to traverse every directory above MOUNTPOINT.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cache", Usage: "cache directory, kept and reused across mounts (default: a temporary one)"},
			&cli.BoolFlag{Name: "capture", Usage: "trace accessed and modified chunks into CACHE/trace.json at unmount"},
			&cli.IntFlag{Name: "readahead-kb", Usage: "kernel readahead window of the mount in KiB (default 128; 4 for exact demand paging, 512 for fast sequential reads)"},
			&cli.StringFlag{Name: "user", Usage: "the one other user who may open the images (QEMU's), by name or uid (default: only this user)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("%w: mount takes a base ID and a mount point", errUsage)
			}
			user, err := parseMountUser(c.String("user"))
			if err != nil {
				return fmt.Errorf("%w: --user: %v", errUsage, err)
			}
			return runMount(c.Context, mountOptions{globals: globalsOf(c), id: c.Args().Get(0), mountpoint: c.Args().Get(1),
				cache: c.String("cache"), capture: c.Bool("capture"), readAheadKB: c.Int("readahead-kb"), user: user}, c.App.Writer, c.App.ErrWriter)
		},
	}
}

func runMount(ctx context.Context, o mountOptions, stdout, stderr io.Writer) error {
	if o.capture && o.cache == "" {
		return errors.New("--capture needs --cache DIR, where the trace is kept")
	}
	if err := cloudletfs.CheckFUSE(); err != nil {
		return err
	}
	store, b, err := openBase(o.globals, o.id)
	if err != nil {
		return err
	}
	cache := o.cache
	if cache == "" {
		draft, err := store.NewDraft()
		if err != nil {
			return err
		}
		defer draft.Discard()
		cache = draft.Path("cache")
	}
	fsys, err := cloudletfs.Open(cloudletfs.Config{
		Dir:      cache,
		Identity: "base " + b.ID,
		Capture:  o.capture,
		Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size, Base: b.Path(base.DiskFile)},
			{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size, Base: b.Path(base.MemoryFile)},
		},
	})
	if err != nil {
		return err
	}
	logger := log.New(stderr, "", log.LstdFlags)
	mnt, err := fsys.Mount(o.mountpoint, cloudletfs.MountOptions{ReadAheadKB: o.readAheadKB, RaiseDirtyLimit: o.capture, User: o.user, Log: logger})
	if err != nil {
		fsys.Close()
		return err
	}
	fmt.Fprintf(stdout, "ready %s\n", mnt.Dir)
	<-ctx.Done()
	fmt.Fprintf(stderr, "unmounting %s\n", mnt.Dir)
	err = errors.Join(mnt.Unmount(), fsys.Close())
	for _, img := range fsys.Images() {
		s := img.Stats()
		fmt.Fprintf(stderr, "%s: read %d bytes, wrote %d bytes, %d of %d chunks in the cache\n", s.Image, s.BytesRead, s.BytesWritten, s.ChunksPresent, s.ChunksTotal)
	}
	if o.capture && err == nil {
		fmt.Fprintf(stderr, "trace: %s/%s\n", cache, cloudletfs.TraceFile)
	}
	return err
}

// parseMountUser resolves --user: a user name, or a uid (with its group from the user
// database, or a group of the same number when it has no entry there).
func parseMountUser(s string) (*cloudletfs.User, error) {
	if s == "" {
		return nil, nil
	}
	var u *user.User
	var err error
	if _, nerr := strconv.ParseUint(s, 10, 32); nerr == nil {
		if u, err = user.LookupId(s); errors.As(err, new(user.UnknownUserIdError)) {
			u, err = &user.User{Uid: s, Gid: s}, nil
		}
	} else {
		u, err = user.Lookup(s)
	}
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: uid %q: %w", s, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: gid %q: %w", s, u.Gid, err)
	}
	return &cloudletfs.User{UID: uint32(uid), GID: uint32(gid)}, nil
}
