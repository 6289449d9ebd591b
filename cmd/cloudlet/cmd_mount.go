package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

type mountOptions struct {
	globals
	id          string
	mountpoint  string
	cache       string
	capture     bool
	readAheadKB int
	user        *cloudletfs.User // who may open the images besides us; nil: nobody
	// overlay is served over the base when set: a file or URL.
	overlay  string
	http     origin.HTTPOptions
	readOnly bool
	// forwards and accel go into qemu.args.
	forwards []vm.Forward
	accel    vm.Accel
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "serve a base's (or an overlay's) disk and memory images through cloudletfs",
		UsageText: "cloudlet mount BASE_ID MOUNTPOINT [--overlay FILE|URL] [--cache DIR] [--read-only] [--hostfwd RULE] [--capture] [--user NAME|UID]",
		Description: "MOUNTPOINT gets disk/image, memory/image, stats/ and streams/. With --overlay, the images are the\n" +
			"overlay's custom VM: its chunks are fetched behind them (the working set first, what is read jumps\n" +
			"the queue) and verified, as in a synthesis. Writes go to the cache, never to the base or the overlay.\n" +
			"Beside the images are what a stock QEMU needs to resume the VM: devstate, vm.json, kernel, initrd,\n" +
			"qemu.args (QEMU's arguments, one a line), resume.qmp and resume.sh: 'sh MOUNTPOINT/resume.sh' resumes\n" +
			"the VM with stock QEMU (see the README, 'Mounting an overlay').\n" +
			"It runs until SIGINT or SIGTERM, then unmounts. It prints 'ready MOUNTPOINT' on stdout once it\n" +
			"serves, 'complete' once every chunk is local, or 'failed: REASON' if the fetch gives up (reads of\n" +
			"chunks that did not arrive then fail with EIO).\n" +
			"The images are mode 0600: only this user can open them, or the one --user names (the user a\n" +
			"QEMU on them runs as), who must be able to traverse every directory above MOUNTPOINT.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "overlay", Usage: "serve this overlay (file or http(s) URL) over the base, fetched lazily"},
			&cli.StringFlag{Name: "cache", Usage: "cache directory, kept and reused across mounts (default: a temporary one)"},
			&cli.BoolFlag{Name: "read-only", Usage: "refuse every write (EROFS), for inspecting the images"},
			&cli.DurationFlag{Name: "retry-for", Value: 2 * time.Minute, Usage: "with --overlay: how long to retry a failing origin before giving up"},
			&cli.StringSliceFlag{Name: "hostfwd", Usage: "a host forward for qemu.args: tcp:[HOSTADDR:]HOSTPORT-:GUESTPORT (repeatable)"},
			&cli.StringFlag{Name: "accel", Value: "auto", Usage: "accelerator for qemu.args: auto (KVM with kvm_intel/kvm_amd, else TCG), kvm or tcg"},
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
			o := mountOptions{globals: globalsOf(c), id: c.Args().Get(0), mountpoint: c.Args().Get(1),
				cache: c.String("cache"), capture: c.Bool("capture"), readAheadKB: c.Int("readahead-kb"), user: user,
				overlay: c.String("overlay"), http: origin.HTTPOptions{RetryFor: c.Duration("retry-for")}, readOnly: c.Bool("read-only")}
			for _, s := range c.StringSlice("hostfwd") {
				f, err := vm.ParseForward(s)
				if err != nil {
					return fmt.Errorf("%w: --hostfwd: %v", errUsage, err)
				}
				o.forwards = append(o.forwards, f)
			}
			if o.accel, err = vm.ParseAccel(c.String("accel")); err != nil {
				return fmt.Errorf("%w: --accel: %v", errUsage, err)
			}
			return runMount(c.Context, o, c.App.Writer, c.App.ErrWriter)
		},
	}
}

func runMount(ctx context.Context, o mountOptions, stdout, stderr io.Writer) error {
	if o.capture && o.cache == "" {
		return errors.New("--capture needs --cache DIR, where the trace is kept")
	}
	if o.capture && o.readOnly {
		return errors.New("--capture traces writes: it does not go with --read-only")
	}
	if err := cloudletfs.CheckFUSE(); err != nil {
		return err
	}
	store, b, err := openBase(o.globals, o.id)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.mountpoint)
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
	logger := log.New(stderr, "", log.LstdFlags)
	src, err := openMountSource(ctx, o, b, cache)
	if err != nil {
		return err
	}
	defer src.close()
	files, stock, err := resumeFiles(b, src.overlayID(), src.devstate, dir, o.forwards, o.accel)
	if err != nil {
		return err
	}
	src.cfg.Files, src.cfg.Capture, src.cfg.Log = files, o.capture, logger
	fsys, err := cloudletfs.Open(src.cfg)
	if err != nil {
		return err
	}
	mnt, err := fsys.Mount(dir, cloudletfs.MountOptions{ReadAheadKB: o.readAheadKB, RaiseDirtyLimit: o.capture,
		ReadOnly: o.readOnly, User: o.user, Log: logger})
	if err != nil {
		fsys.Close()
		return err
	}
	fmt.Fprintf(stdout, "ready %s\n", mnt.Dir)
	fmt.Fprintf(stderr, "qemu.args: accelerator %s (%s); a stock QEMU keeps its MADV_HUGEPAGE advice on guest RAM (see vm.json)\n", stock.Accel, stock.Why)
	fetchErr := src.serve(ctx, fsys, stdout, logger)
	fmt.Fprintf(stderr, "unmounting %s\n", mnt.Dir)
	src.stop()
	err = errors.Join(fetchErr, mnt.Unmount(), fsys.Close())
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
