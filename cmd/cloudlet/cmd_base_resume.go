package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

type baseResumeOptions struct {
	globals
	run          runOptions
	id           string
	probe        *probe.Probe
	probeTimeout time.Duration
}

func baseResumeCommand() *cli.Command {
	return &cli.Command{
		Name:      "resume",
		Usage:     "resume a base as a running VM (the base's files stay unchanged)",
		UsageText: "cloudlet base resume ID [--hostfwd tcp:HOSTPORT-:GUESTPORT]... [--probe PROBE]",
		Description: "The VM runs until Ctrl-C (or SIGTERM), then it is stopped and its changes are dropped.\n" +
			"With --probe, the time from start to the probe's first answer is printed on stdout.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "probe", Usage: "PROBE to time the first answer: http://..., tcp://... or serial:TEXT"},
			&cli.DurationFlag{Name: "probe-timeout", Value: 5 * time.Minute, Usage: "give up if PROBE has not answered by then"},
		}, runFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%w: base resume takes one base ID", errUsage)
			}
			o := baseResumeOptions{globals: globalsOf(c), id: c.Args().First(), probeTimeout: c.Duration("probe-timeout")}
			var err error
			if o.run, err = parseRunOptions(c); err != nil {
				return err
			}
			if o.probe, err = parseProbe(c.String("probe")); err != nil {
				return fmt.Errorf("--probe: %w", err)
			}
			return runBaseResume(c.Context, o, c.App.Writer, c.App.ErrWriter)
		},
	}
}

// resumeTimes is what a resume reports, on stdout and with --json.
type resumeTimes struct {
	BaseID       string  `json:"base_id"`
	Accel        string  `json:"accel"`
	ResumedSecs  float64 `json:"resumed_s"`
	FirstAnswerS float64 `json:"first_answer_s,omitempty"`
	Probe        string  `json:"probe,omitempty"`
}

func runBaseResume(ctx context.Context, o baseResumeOptions, stdout, stderr io.Writer) error {
	store, b, err := openBase(o.globals, o.id)
	if err != nil {
		return err
	}
	start := time.Now()
	host := o.globals.host()
	if _, err := vm.CheckResume(ctx, vm.Options{Config: b.Manifest.VM, Accel: o.run.accel, Host: host}); err != nil {
		return vm.Refusal("base "+b.ID, err)
	}
	if err := b.VerifyFiles(ctx, nil, base.DevstateFile, base.KernelFile, base.InitrdFile); err != nil {
		return err
	}
	// The guest's disk writes go to a qcow2 layer over the base disk, and RAM is mapped
	// privately: the base is never written.
	// The layer lives in a draft of the store: locked while we run, and removed by the next
	// store user if we are killed.
	work, err := store.NewDraft()
	if err != nil {
		return err
	}
	defer work.Discard()
	layer := work.Path("disk.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
		"-b", b.Path(base.DiskFile), layer).CombinedOutput(); err != nil {
		return fmt.Errorf("disk layer over base %s: qemu-img: %w: %s", b.ID, err, out)
	}

	opts := b.VMOptions()
	opts.Disk = vm.Disk{Path: layer, Format: "qcow2"}
	opts.Memory = vm.Memory{Path: b.Path(base.MemoryFile), Share: false}
	opts.Name = b.ID[:12]
	opts.Host = host
	closeLog, err := o.run.apply(&opts, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	if opts.RunAs != nil {
		// QEMU opens its memory file itself, read-write even for a private mapping, and as
		// its own user: it gets a copy, never the base's file. The copy goes with the draft,
		// so it is never given back. (A copy of 256 MiB costs a few tenths of a second.)
		mem := work.Path(base.MemoryFile)
		if err := base.CopyFileSparse(ctx, mem, opts.Memory.Path, nil); err != nil {
			return fmt.Errorf("copy the memory of base %s for qemu: %w", b.ID, err)
		}
		if _, err := opts.RunAs.Lend(mem); err != nil {
			return err
		}
		opts.Memory.Path = mem
	}

	v, err := vm.Resume(ctx, opts, b.Path(base.DevstateFile))
	if err != nil {
		return fmt.Errorf("resume base %s: %w", b.ID, err)
	}
	defer v.Stop(context.WithoutCancel(ctx))
	t := resumeTimes{BaseID: b.ID, Accel: string(v.Accel()), ResumedSecs: time.Since(start).Seconds()}
	fmt.Fprintf(stderr, "resumed base %s in %.3fs (%s); Ctrl-C stops it\n", b.ID[:12], t.ResumedSecs, v)
	reachability(stderr, o.run)

	if o.probe != nil {
		wctx, cancel := context.WithTimeout(ctx, o.probeTimeout)
		err := waitReady(wctx, *o.probe, v)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("resume base %s: no answer within %v: %w", b.ID, o.probeTimeout, err)
		}
		t.FirstAnswerS, t.Probe = time.Since(start).Seconds(), o.probe.String()
	}
	if o.json {
		json.NewEncoder(stdout).Encode(t)
	} else if o.probe != nil {
		fmt.Fprintf(stdout, "first answer after %.3fs (%s)\n", t.FirstAnswerS, t.Probe)
	}

	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "stopping the VM")
		return nil
	case <-v.Done():
		if v.Err() != nil {
			return fmt.Errorf("the VM stopped: %w", v.Err())
		}
		fmt.Fprintln(stderr, "the guest shut down")
		return nil
	}
}
