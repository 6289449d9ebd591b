package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/capture"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/vm"
)

func overlayCommand() *cli.Command {
	return &cli.Command{
		Name:  "overlay",
		Usage: "create, inspect, verify and apply overlays",
		Subcommands: []*cli.Command{
			overlayCreateCommand(),
			overlayProfileCommand(),
			overlayPushCommand(),
			{Name: "info", Usage: "describe an overlay", ArgsUsage: "FILE", Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("%w: overlay info takes one file", errUsage)
				}
				return runOverlayInfo(globalsOf(c), c.Args().First(), c.App.Writer)
			}},
			{
				Name: "verify", Usage: "check every digest of an overlay against its base", ArgsUsage: "FILE",
				Flags: []cli.Flag{&cli.StringFlag{Name: "base", Required: true, Usage: "the base ID"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("%w: overlay verify takes one file", errUsage)
					}
					return runOverlayVerify(c.Context, globalsOf(c), c.Args().First(), c.String("base"), c.App.ErrWriter)
				},
			},
			{
				Name: "apply", Usage: "rebuild the full disk and memory images offline", ArgsUsage: "FILE",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "base", Required: true, Usage: "the base ID"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "directory for disk.img, memory.img and devstate"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("%w: overlay apply takes one file", errUsage)
					}
					return runOverlayApply(c.Context, globalsOf(c), c.Args().First(), c.String("base"), c.String("out"), c.App.ErrWriter)
				},
			},
		},
	}
}

func overlayCreateCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "resume a base, customise it, and capture the difference as an overlay",
		UsageText: "cloudlet overlay create BASE_ID [--exec CMD]... [--ready PROBE] [--hostfwd ...] [--codec zstd|xz] -o FILE",
		Description: "Each --exec runs in the guest's shell over the serial console; the first that fails stops\n" +
			"the capture. Without --exec, on a terminal, it waits for Enter while you customise the guest.",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "exec", Usage: "shell command to run in the guest (repeatable, in order)"},
			&cli.StringFlag{Name: "ready", Usage: "PROBE that must answer before the snapshot"},
			&cli.DurationFlag{Name: "ready-timeout", Value: 5 * time.Minute, Usage: "give up if PROBE has not answered by then"},
			&cli.StringFlag{Name: "codec", Value: "zstd", Usage: "blob compression: zstd (fast decode) or xz (smallest)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "overlay file to write"},
			&cli.StringFlag{Name: "save-images", Usage: "also write the customised disk.img and memory.img to this directory"},
		}, runFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%w: overlay create takes one base ID", errUsage)
			}
			return runOverlayCreate(c, c.Args().First())
		},
	}
}

func runOverlayCreate(c *cli.Context, id string) error {
	ctx, stdout, stderr := c.Context, c.App.Writer, c.App.ErrWriter
	g := globalsOf(c)
	run, err := parseRunOptions(c)
	if err != nil {
		return err
	}
	codec, err := overlay.ParseCodec(c.String("codec"))
	if err != nil {
		return fmt.Errorf("--codec: %w", err)
	}
	ready, err := parseProbe(c.String("ready"))
	if err != nil {
		return fmt.Errorf("--ready: %w", err)
	}
	execs := c.StringSlice("exec")
	interactive := len(execs) == 0
	if interactive && ready == nil && !isTerminal(c.App.Reader) {
		return errors.New("nothing to capture: give --exec commands (or --ready), or run on a terminal to customise by hand")
	}
	output, err := filepath.Abs(c.String("output"))
	if err != nil {
		return err
	}
	store, b, err := openBase(g, id)
	if err != nil {
		return err
	}
	work, err := store.NewDraft()
	if err != nil {
		return err
	}
	defer work.Discard()

	o := capture.Options{Base: b, WorkDir: work.Dir, Exec: execs, Ready: ready, ReadyTimeout: c.Duration("ready-timeout"),
		Codec: codec, Output: output, SaveImages: c.String("save-images"), Log: stderr, Progress: newProgress(stderr)}
	closeLog, err := run.apply(&o.VM, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	if interactive && isTerminal(c.App.Reader) {
		o.Wait = func(ctx context.Context, v *vm.VM) error {
			fmt.Fprintln(stderr, "The guest runs. Its serial console (a root shell) is on this terminal: type commands.")
			reachability(stderr, run)
			fmt.Fprintln(stderr, "Press Ctrl-D on an empty line to capture the overlay.")
			return shellUntilEOF(ctx, c.App.Reader, stderr, v)
		}
	}
	res, err := capture.Create(ctx, o)
	if err != nil {
		return err
	}
	if g.json {
		return json.NewEncoder(stdout).Encode(res)
	}
	d, s := res.Diff, res.Overlay
	fmt.Fprintf(stderr, "chunks: %d dirty, %d unchanged (dropped), %d zero, %d deduplicated against the base, %d within the overlay, %d unique stored\n",
		d.Dirty, d.Unchanged, d.Zero, d.BaseDedup, d.SelfDedup, d.Stored)
	fmt.Fprintf(stderr, "bytes: %d raw, %d compressed (%s) in %d blobs; overlay file %d bytes; %.1fs\n",
		s.RawBytes, s.CompressedBytes, codec, s.Blobs, s.Size, res.Elapsed.Seconds())
	fmt.Fprintf(stderr, "overlay %s written to %s\n", s.ID[:12], output)
	fmt.Fprintln(stdout, output)
	return nil
}

func openOverlay(path string, want overlay.Expect) (*overlay.Reader, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	r, err := overlay.Open(f, st.Size(), want)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, f, nil
}

// overlayInfo is what 'overlay info' shows.
type overlayInfo struct {
	ID              string         `json:"id"`
	BaseID          string         `json:"base_id"`
	Size            int64          `json:"size"`
	Codec           string         `json:"codec"`
	Images          map[string]int `json:"image_sizes_mib"`
	Chunks          map[string]int `json:"chunks"`
	Blobs           int            `json:"blobs"`
	DevstateBytes   int64          `json:"devstate_bytes"`
	WorkingSetBlobs int            `json:"working_set_blobs"`
	WorkingSetBytes int64          `json:"working_set_bytes"`
}

func runOverlayInfo(g globals, path string, stdout io.Writer) error {
	r, f, err := openOverlay(path, overlay.Expect{})
	if err != nil {
		return err
	}
	defer f.Close()
	defer r.Close()
	ix := r.Index
	info := overlayInfo{ID: r.ID(), BaseID: r.BaseID(), Size: r.Size(), Codec: ix.Codec.String(),
		Images: map[string]int{}, Chunks: map[string]int{}, Blobs: len(ix.Blobs), DevstateBytes: ix.Devstate.Raw,
		WorkingSetBlobs: int(ix.WorkingSetBlobs), WorkingSetBytes: ix.WorkingSetBytes()}
	for _, im := range ix.Images {
		info.Images[im.Name] = int(im.Size >> 20)
	}
	for k, n := range ix.Counts() {
		info.Chunks[k.String()] = n
	}
	if g.json {
		return json.NewEncoder(stdout).Encode(info)
	}
	fmt.Fprintf(stdout, "overlay:     %s\nbase:        %s\nfile:        %d bytes, %s, %d blobs\n", info.ID, info.BaseID, info.Size, info.Codec, info.Blobs)
	for _, im := range ix.Images {
		fmt.Fprintf(stdout, "image:       %s, %d bytes\n", im.Name, im.Size)
	}
	fmt.Fprintf(stdout, "chunks:      %d stored, %d self-deduplicated, %d base references, %d zero\n",
		info.Chunks["blob"], info.Chunks["self"], info.Chunks["base"], info.Chunks["zero"])
	fmt.Fprintf(stdout, "devstate:    %d bytes\n", info.DevstateBytes)
	if info.WorkingSetBlobs == 0 {
		fmt.Fprintf(stdout, "working set: not profiled (prefetch follows the capture's first-access order)\n")
	} else {
		fmt.Fprintf(stdout, "working set: %d blobs, %d bytes\n", info.WorkingSetBlobs, info.WorkingSetBytes)
	}
	return nil
}

// openWithBase opens an overlay and the base it names, checking they belong together.
func openWithBase(g globals, path, baseID string) (*overlay.Reader, *base.Base, func(), error) {
	_, b, err := openBase(g, baseID)
	if err != nil {
		return nil, nil, nil, err
	}
	r, f, err := openOverlay(path, synthesis.ExpectFor(b))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := synthesis.CheckOverlay(r, b); err != nil {
		r.Close()
		f.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, b, func() { r.Close(); f.Close() }, nil
}

func runOverlayVerify(ctx context.Context, g globals, path, baseID string, stderr io.Writer) error {
	r, b, done, err := openWithBase(g, path, baseID)
	if err != nil {
		return err
	}
	defer done()
	imgs, closeImgs, err := b.OpenImages()
	if err != nil {
		return err
	}
	defer closeImgs()
	if err := r.Verify(ctx, imgs); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(stderr, "overlay %s: every digest matches (%d blobs, %d chunks)\n", r.ID()[:12], len(r.Index.Blobs), len(r.Index.Chunks))
	return nil
}

func runOverlayApply(ctx context.Context, g globals, path, baseID, out string, stderr io.Writer) error {
	r, b, done, err := openWithBase(g, path, baseID)
	if err != nil {
		return err
	}
	defer done()
	imgs, closeImgs, err := b.OpenImages()
	if err != nil {
		return err
	}
	defer closeImgs()
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	var outs []io.WriterAt
	for _, name := range []string{base.DiskFile, base.MemoryFile} {
		dst := filepath.Join(out, name)
		os.Remove(dst)
		if err := base.CopyFileSparse(ctx, dst, b.Path(name), newProgress(stderr)); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		f, err := os.OpenFile(dst, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		outs = append(outs, f)
	}
	if err := r.Apply(ctx, imgs, outs); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	dev, err := r.Devstate()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.WriteFile(filepath.Join(out, base.DevstateFile), dev, 0o600); err != nil {
		return err
	}
	for _, w := range outs {
		if err := w.(*os.File).Sync(); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "applied overlay %s to base %s in %s\n", r.ID()[:12], b.ID[:12], out)
	return nil
}

// shellUntilEOF bridges the terminal and the guest's serial console, line by line, until the
// user ends input (Ctrl-D).
func shellUntilEOF(ctx context.Context, stdin io.Reader, out io.Writer, v *vm.VM) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go v.Console().Copy(ctx, noCursorQueries{out})
	v.Console().Write([]byte("\n"))
	lines := make(chan string)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdin)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			if _, err := v.Console().Write([]byte(l + "\n")); err != nil {
				return fmt.Errorf("serial console: %w", err)
			}
		case <-v.Done():
			return fmt.Errorf("the VM stopped before the capture: %w", v.Err())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// noCursorQueries drops the guest shell's cursor-position queries (ESC [6n) on their way to
// the terminal: the terminal would answer them into our stdin, where the answer sits in the
// line buffer and turns the user's Ctrl-D into a flush instead of an end of input.
type noCursorQueries struct{ w io.Writer }

func (n noCursorQueries) Write(p []byte) (int, error) {
	if _, err := n.w.Write(bytes.ReplaceAll(p, []byte("\x1b[6n"), nil)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func overlayProfileCommand() *cli.Command {
	return &cli.Command{
		Name:      "profile",
		Usage:     "record the working set of a synthesised VM and lay the overlay out to fetch it first",
		UsageText: "cloudlet overlay profile FILE --base ID --probe PROBE [-o FILE] [--hostfwd ...]",
		Description: "Synthesises the overlay locally, records the order in which the VM first touches overlay\n" +
			"chunks until PROBE answers (plus --tail), and rewrites the overlay with those chunks first,\n" +
			"in blobs of their own, so a synthesiser fetches the working set with one range request.\n" +
			"With --runs N it does so N times and keeps the union: no two runs touch quite the same memory.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "base", Required: true, Usage: "the base ID"},
			&cli.StringFlag{Name: "probe", Required: true, Usage: "PROBE whose first answer ends the working set"},
			&cli.DurationFlag{Name: "probe-timeout", Value: 5 * time.Minute, Usage: "give up if PROBE has not answered by then"},
			&cli.DurationFlag{Name: "tail", Value: time.Second, Usage: "keep recording this long after the first answer"},
			&cli.IntFlag{Name: "runs", Value: 3, Usage: "synthesise this many times and take the union of what the VM touched"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "profiled overlay to write (default: rewrite FILE)"},
		}, runFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%w: overlay profile takes one overlay file", errUsage)
			}
			return runOverlayProfile(c, c.Args().First())
		},
	}
}

func runOverlayProfile(c *cli.Context, file string) error {
	g, stderr := globalsOf(c), c.App.ErrWriter
	run, err := parseRunOptions(c)
	if err != nil {
		return err
	}
	pr, err := parseProbe(c.String("probe"))
	if err != nil {
		return fmt.Errorf("--probe: %w", err)
	}
	if c.Int("runs") < 1 {
		return fmt.Errorf("--runs %d: want at least 1", c.Int("runs"))
	}
	output := c.String("output")
	if output == "" {
		output = file
	}
	if output, err = filepath.Abs(output); err != nil {
		return err
	}
	store, b, err := openBase(g, c.String("base"))
	if err != nil {
		return err
	}
	work, err := store.NewDraft()
	if err != nil {
		return err
	}
	defer work.Discard()
	o := synthesis.Options{Base: b, Source: file, CacheDir: work.Path("cache"), MountDir: work.Path("mnt"),
		Probe: pr, ProbeTimeout: c.Duration("probe-timeout"), ProfileTail: c.Duration("tail")}
	closeLog, err := run.apply(&o.VM, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	ws, err := synthesis.Profile(c.Context, o, c.Int("runs"), output)
	if err != nil {
		return fmt.Errorf("profile %s: %w", file, err)
	}
	fmt.Fprintf(stderr, "working set: %d stored chunks, fetched first; profiled overlay written to %s\n", ws, output)
	fmt.Fprintln(c.App.Writer, output)
	return nil
}
