package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/registry"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

func synthesisCommand() *cli.Command {
	return &cli.Command{
		Name:      "synthesis",
		Usage:     "rebuild a custom VM from a base and an overlay (file, URL or registry reference), and resume it early",
		UsageText: "cloudlet synthesis BASE_ID FILE|URL|oci://REGISTRY/REPO:TAG [--no-early-start] [--probe PROBE] [--hostfwd ...]",
		Description: "The VM resumes at once on cloudletfs while the overlay streams in; chunks it touches are\n" +
			"fetched first, and every chunk is verified before the VM sees it. It prints a timeline:\n" +
			"index fetched, VM resumed, first probe answer (TTFR), overlay complete. The VM runs until\n" +
			"Ctrl-C. With --cache DIR, a later run with the same DIR does not fetch again what is there.\n" +
			"An oci:// reference (a tag or @sha256:DIGEST, pushed by 'overlay push') is read by range from the\n" +
			"registry, with its credentials; --pull-base first pulls a missing base from the overlay's subject.",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "no-early-start", Usage: "fetch the whole overlay before resuming (the Elijah baseline)"},
			&cli.StringFlag{Name: "probe", Usage: "PROBE whose first answer is the time to first response"},
			&cli.DurationFlag{Name: "probe-timeout", Value: 5 * time.Minute, Usage: "give up if PROBE has not answered by then"},
			&cli.StringFlag{Name: "cache", Usage: "cache directory, kept (default: a temporary one, removed at the end)"},
			&cli.StringFlag{Name: "bandwidth", Usage: "cap on the fetch rate, e.g. 38Mbit, 5MB (per second)"},
			&cli.IntFlag{Name: "concurrency", Value: 4, Usage: "range requests in flight"},
			&cli.DurationFlag{Name: "retry-for", Value: 2 * time.Minute, Usage: "how long to retry an origin that makes no progress before giving up (a slow but moving link never gives up)"},
			&cli.BoolFlag{Name: "exit-when-complete", Usage: "stop the VM and exit once the probe answered and the overlay is complete"},
			&cli.BoolFlag{Name: "detach", Usage: "keep running in the background once the VM has resumed (and the probe answered); prints its PID and log"},
			&cli.BoolFlag{Name: "pull-base", Usage: "oci:// only: pull the base from the overlay's subject if it is not here"},
			&cli.BoolFlag{Name: "oci-full-download", Usage: "oci:// only: if the registry does not answer range requests, download the whole overlay before resuming"},
			chunkCacheFlag(),
		}, append(registryFlags(), runFlags()...)...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("%w: synthesis takes a base ID and an overlay file or URL", errUsage)
			}
			if c.Bool("detach") {
				return runDetached(c)
			}
			return runSynthesis(c)
		},
	}
}

func runSynthesis(c *cli.Context) error {
	ctx, stdout, stderr := c.Context, c.App.Writer, c.App.ErrWriter
	g := globalsOf(c)
	run, err := parseRunOptions(c)
	if err != nil {
		return err
	}
	pr, err := parseProbe(c.String("probe"))
	if err != nil {
		return fmt.Errorf("--probe: %w", err)
	}
	var bw int64
	if v := c.String("bandwidth"); v != "" {
		if bw, err = synthesis.ParseRate(v); err != nil {
			return fmt.Errorf("--bandwidth: %w", err)
		}
	}
	src := c.Args().Get(1)
	ropts := registryOptions(c)
	if c.Bool("pull-base") {
		if !strings.HasPrefix(src, registry.Scheme) {
			return fmt.Errorf("%w: --pull-base needs an oci:// overlay", errUsage)
		}
		if err := pullBaseFor(ctx, g, c.Args().Get(0), src, ropts, c.Duration("retry-for"), stderr); err != nil {
			return err
		}
	}
	store, b, err := openBase(g, c.Args().Get(0))
	if err != nil {
		return err
	}
	work, err := store.NewDraft()
	if err != nil {
		return err
	}
	defer work.Discard()
	cache := c.String("cache")
	if cache == "" {
		cache = work.Path("cache")
	}
	httpOpts := origin.HTTPOptions{RetryFor: c.Duration("retry-for"),
		OCI: origin.OCIOptions{Registry: ropts, FullDownload: c.Bool("oci-full-download"), SpoolDir: work.Dir}}
	o := synthesis.Options{
		Base: b, Source: src, CacheDir: cache, MountDir: work.Path("mnt"), HTTP: httpOpts,
		Fetch:      synthesis.FetchOptions{Concurrency: c.Int("concurrency"), BytesPerSecond: bw},
		EarlyStart: !c.Bool("no-early-start"), Probe: pr, ProbeTimeout: c.Duration("probe-timeout"),
		ExitWhenComplete: c.Bool("exit-when-complete"),
	}
	chunks, err := openChunkCache(c, g.home)
	if err != nil {
		return err
	}
	if chunks != nil {
		defer chunks.Close()
		o.Fetch.Store = chunks
	}
	closeLog, err := run.apply(&o.VM, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	o.VM.Host = g.host()
	o.OnEvent = func(e synthesis.Event) {
		if g.json {
			json.NewEncoder(stdout).Encode(e)
			return
		}
		line := fmt.Sprintf("%7.3fs  %-13s %9d bytes fetched", e.Seconds, e.Name, e.Bytes)
		if e.Fetch != nil && e.Fetch.FromStoreBytes > 0 {
			line += fmt.Sprintf(", %d from the chunk cache", e.Fetch.FromStoreBytes)
		}
		if e.Detail != "" {
			line += "  " + e.Detail
		}
		fmt.Fprintln(stdout, line)
		if e.Name == "resumed" {
			reachability(stderr, run)
		}
	}
	_, err = synthesis.Run(ctx, o)
	if err != nil {
		return fmt.Errorf("synthesis of %s: %w", filepath.Base(src), err)
	}
	return nil
}

// runDetached starts this same synthesis as a background process in its own session, with its
// JSON timeline in a log file, and returns once the VM has resumed (and, with --probe, once it
// has answered), or with the child's error.
func runDetached(c *cli.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "-detach" {
			args = append(args, a)
		}
	}
	args = append([]string{"--json"}, args...)
	logDir := filepath.Join(globalsOf(c).home, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	logFile, err := os.CreateTemp(logDir, "synthesis-*.log")
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	want := "resumed"
	if c.String("probe") != "" {
		want = "first_answer"
	}
	for {
		b, _ := os.ReadFile(logFile.Name())
		if strings.Contains(string(b), `"event":"`+want+`"`) {
			fmt.Fprintf(c.App.Writer, "synthesis runs detached as pid %d; timeline and log: %s; stop it with: kill %d\n",
				cmd.Process.Pid, logFile.Name(), cmd.Process.Pid)
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("detached synthesis ended (%v):\n%s", err, b)
		case <-c.Context.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return c.Context.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
