package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

type baseCreateOptions struct {
	globals
	run         runOptions
	disk        string
	kernel      string
	initrd      string
	config      vm.Config
	ready       *probe.Probe
	bootTimeout time.Duration
	name        string
}

func baseCreateCommand() *cli.Command {
	def := vm.DefaultConfig()
	return &cli.Command{
		Name:      "create",
		Usage:     "boot a disk, wait until it is ready, and snapshot it as a base",
		UsageText: "cloudlet base create --disk FILE [--kernel F --initrd F --append S] [--ready PROBE] [--hostfwd ...]",
		Description: "The disk is copied into the base; the original is not changed. PROBE is http://HOST:PORT/PATH\n" +
			"(first 2xx), tcp://HOST:PORT (connect) or serial:TEXT. Without --ready, on a terminal, the\n" +
			"snapshot is taken when you press Enter. The base ID is the last line on stdout.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "disk", Usage: "raw disk image to boot", Required: true},
			&cli.StringFlag{Name: "kernel", Usage: "kernel to boot (otherwise the firmware boots the disk)"},
			&cli.StringFlag{Name: "initrd", Usage: "initrd for --kernel"},
			&cli.StringFlag{Name: "append", Value: def.Append, Usage: "kernel command line"},
			&cli.StringFlag{Name: "memory", Value: "256M", Usage: "guest RAM"},
			&cli.IntFlag{Name: "cpus", Value: def.CPUs, Usage: "virtual CPUs"},
			&cli.StringFlag{Name: "cpu", Usage: "QEMU CPU model; a resume repeats it, and only hosts that provide it can resume the base " +
				"(default: " + vm.PortableCPU + " under KVM, which nearly every x86-64 host provides; max under TCG; host ties the base to CPUs like this one)"},
			&cli.StringFlag{Name: "machine", Value: def.Machine, Usage: "QEMU machine type; an alias such as q35 is recorded as the versioned type it is here (pc-q35-7.2)"},
			&cli.StringFlag{Name: "ready", Usage: "PROBE that says the guest is ready to snapshot"},
			&cli.DurationFlag{Name: "boot-timeout", Value: 5 * time.Minute, Usage: "give up if PROBE has not answered by then"},
			&cli.StringFlag{Name: "name", Usage: "a name to show in 'base list'"},
		}, runFlags()...),
		Action: func(c *cli.Context) error {
			o := baseCreateOptions{globals: globalsOf(c), disk: c.String("disk"), kernel: c.String("kernel"),
				initrd: c.String("initrd"), bootTimeout: c.Duration("boot-timeout"), name: c.String("name")}
			var err error
			if o.run, err = parseRunOptions(c); err != nil {
				return err
			}
			o.config = def
			o.config.Append, o.config.CPUs, o.config.CPU, o.config.Machine = c.String("append"), c.Int("cpus"), c.String("cpu"), c.String("machine")
			if o.config.MemoryBytes, err = vm.ParseSize(c.String("memory")); err != nil {
				return fmt.Errorf("--memory: %w", err)
			}
			if o.ready, err = parseProbe(c.String("ready")); err != nil {
				return fmt.Errorf("--ready: %w", err)
			}
			return runBaseCreate(c.Context, o, c.App.Reader, c.App.Writer, c.App.ErrWriter)
		},
	}
}

func runBaseCreate(ctx context.Context, o baseCreateOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	accel, _ := vm.ChooseAccel(o.run.accel)
	if o.config.CPU == "" {
		o.config.CPU = vm.DefaultCPU(accel)
	}
	if err := o.config.Validate(); err != nil {
		return err
	}
	if o.initrd != "" && o.kernel == "" {
		return errors.New("--initrd needs --kernel")
	}
	for _, f := range []struct{ flag, path string }{{"--disk", o.disk}, {"--kernel", o.kernel}, {"--initrd", o.initrd}} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		} else if !st.Mode().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file", f.flag, f.path)
		}
	}
	host := o.globals.host()
	if err := checkCanMake(ctx, host, accel, o.config); err != nil {
		return err
	}
	interactive := o.ready == nil
	if interactive && !isTerminal(stdin) {
		return errors.New("no --ready probe, and stdin is not a terminal to press Enter on: give --ready PROBE")
	}
	store, err := openStore(o.globals)
	if err != nil {
		return err
	}
	draft, err := store.NewDraft()
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			draft.Discard()
		}
	}()

	progress := newProgress(stderr)
	copies := []struct{ src, dst string }{{o.disk, base.DiskFile}, {o.kernel, base.KernelFile}, {o.initrd, base.InitrdFile}}
	for _, c := range copies {
		if c.src == "" {
			continue
		}
		if err := base.CopyFileSparse(ctx, draft.Path(c.dst), c.src, progress); err != nil {
			return fmt.Errorf("copy %s into the base: %w", c.src, err)
		}
	}

	opts := vm.Options{
		Host:   host,
		Config: o.config,
		Disk:   vm.Disk{Path: draft.Path(base.DiskFile)},
		Memory: vm.Memory{Path: draft.Path(base.MemoryFile), Share: true},
	}
	if o.kernel != "" {
		opts.Kernel = draft.Path(base.KernelFile)
	}
	if o.initrd != "" {
		opts.Initrd = draft.Path(base.InitrdFile)
	}
	closeLog, err := o.run.apply(&opts, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	// QEMU writes guest RAM into this file itself, as its own user, for the run.
	giveBack, err := opts.RunAs.Lend(opts.Memory.Path)
	if err != nil {
		return err
	}

	start := time.Now()
	v, err := vm.Boot(ctx, opts)
	if err != nil {
		return fmt.Errorf("boot %s: %w", o.disk, err)
	}
	defer v.Kill()
	fmt.Fprintf(stderr, "booting %s (%s)\n", o.disk, v)
	reachability(stderr, o.run)

	if interactive {
		fmt.Fprintln(stderr, "customise the guest if you like, then press Enter to snapshot it as a base")
		if err := waitEnter(ctx, stdin, v); err != nil {
			return err
		}
	} else {
		wctx, cancel := context.WithTimeout(ctx, o.bootTimeout)
		err := waitReady(wctx, *o.ready, v)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("guest not ready within %v: %w\nlast serial output:\n%s", o.bootTimeout, err, indent(v.Console().Tail(600)))
		}
		fmt.Fprintf(stderr, "ready after %v (%s)\n", time.Since(start).Round(time.Millisecond), o.ready)
	}

	// What the snapshot needs of the host that resumes it, asked of this QEMU while it runs.
	cfg, err := v.Record(ctx, o.config)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "recorded for resumes elsewhere: machine %s, CPU %s with %d features under %s, QEMU %s\n",
		cfg.Machine, cfg.CPU, len(cfg.Platform.CPUFeatures), cfg.Platform.Accel, cfg.Platform.QEMU)
	if err := v.Snapshot(ctx, draft.Path(base.DevstateFile)); err != nil {
		return err
	}
	if err := giveBack(); err != nil {
		return err
	}
	b, err := draft.Commit(ctx, base.Manifest{Name: o.name, VM: cfg, Accel: string(v.Accel())}, progress)
	if err != nil {
		return err
	}
	committed = true
	if o.json {
		return json.NewEncoder(stdout).Encode(baseJSON(b))
	}
	fmt.Fprintf(stderr, "base created in %v: %s\n", time.Since(start).Round(time.Millisecond), b.Dir)
	fmt.Fprintln(stdout, b.ID)
	return nil
}

// checkCanMake refuses, before anything boots, a VM whose machine type or CPU model this host's
// QEMU lacks: QEMU would drop the CPU features it cannot provide with a mere warning, and the
// base would record a CPU its guest never saw.
func checkCanMake(ctx context.Context, host *vm.Host, accel vm.Accel, cfg vm.Config) error {
	info, err := host.Info(ctx, accel)
	if err != nil {
		return err
	}
	// The warnings are about recorded platforms, which a new base does not have yet.
	if _, err := info.Check(cfg); err != nil {
		return fmt.Errorf("this host cannot make the base: it %w", err)
	}
	return nil
}

// waitReady waits for the probe, ending early (and saying why) if QEMU exits.
func waitReady(ctx context.Context, p probe.Probe, v *vm.VM) error {
	ctx, cancel := v.Until(ctx)
	defer cancel()
	return p.Wait(ctx, v.Console())
}

func waitEnter(ctx context.Context, stdin io.Reader, v *vm.VM) error {
	line := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(stdin).ReadString('\n')
		line <- err
	}()
	select {
	case err := <-line:
		if err != nil {
			return fmt.Errorf("reading Enter: %w", err)
		}
		return nil
	case <-v.Done():
		return fmt.Errorf("the VM stopped before the snapshot: %w", v.Err())
	case <-ctx.Done():
		return ctx.Err()
	}
}

func indent(s string) string {
	s = strings.ReplaceAll(strings.TrimRight(s, "\r\n"), "\r", "")
	return "  | " + strings.ReplaceAll(s, "\n", "\n  | ")
}
