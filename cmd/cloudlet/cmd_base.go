package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/internal/atomicfile"
	"github.com/cloudlet/cloudlet/vm"
)

func baseCommand() *cli.Command {
	return &cli.Command{
		Name:  "base",
		Usage: "create, resume and manage base VMs",
		Subcommands: []*cli.Command{
			baseCreateCommand(),
			baseResumeCommand(),
			basePushCommand(),
			basePullCommand(),
			{Name: "list", Usage: "list the bases", Action: func(c *cli.Context) error {
				return runBaseList(globalsOf(c), c.App.Writer, c.App.ErrWriter)
			}},
			{Name: "show", Usage: "show a base's manifest, what it needs of a host, and whether this host can resume it", ArgsUsage: "ID",
				Flags: []cli.Flag{&cli.StringFlag{Name: "accel", Value: "auto", Usage: "check this host under this accelerator: auto, kvm or tcg"}},
				Action: withID(func(c *cli.Context, id string) error {
					accel, err := vm.ParseAccel(c.String("accel"))
					if err != nil {
						return err
					}
					return runBaseShow(c.Context, globalsOf(c), id, accel, c.App.Writer)
				})},
			{Name: "delete", Usage: "delete a base", ArgsUsage: "ID", Action: withID(func(c *cli.Context, id string) error {
				return runBaseDelete(globalsOf(c), id, c.App.ErrWriter)
			})},
			{Name: "verify", Usage: "re-hash a base's files and check them against its manifest", ArgsUsage: "ID",
				Action: withID(func(c *cli.Context, id string) error {
					return runBaseVerify(c.Context, globalsOf(c), id, c.App.ErrWriter)
				})},
			{
				Name: "export", Usage: "write a base to one file that 'base import' reads", ArgsUsage: "ID",
				Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "file to write"}},
				Action: withID(func(c *cli.Context, id string) error {
					return runBaseExport(c.Context, globalsOf(c), id, c.String("output"), c.App.ErrWriter)
				}),
			},
			{Name: "import", Usage: "add a base from an export file", ArgsUsage: "FILE", Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("%w: base import takes one file", errUsage)
				}
				return runBaseImport(c.Context, globalsOf(c), c.Args().First(), c.App.Writer, c.App.ErrWriter)
			}},
		},
	}
}

// withID checks that a command got exactly one base ID.
func withID(f func(*cli.Context, string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() != 1 {
			return fmt.Errorf("%w: %s takes one base ID", errUsage, c.Command.FullName())
		}
		return f(c, c.Args().First())
	}
}

// baseInfo is a base as shown by list, show and --json.
type baseInfo struct {
	ID          string    `json:"id"`
	Name        string    `json:"name,omitempty"`
	Created     time.Time `json:"created"`
	Dir         string    `json:"dir"`
	MemoryBytes int64     `json:"memory_bytes"`
	DiskBytes   int64     `json:"disk_bytes"`
}

func baseJSON(b *base.Base) baseInfo {
	return baseInfo{ID: b.ID, Name: b.Manifest.Name, Created: b.Manifest.Created, Dir: b.Dir,
		MemoryBytes: b.Manifest.VM.MemoryBytes, DiskBytes: b.Manifest.Files[base.DiskFile].Size}
}

// openBase opens the store and finds a base by ID or prefix.
func openBase(g globals, id string) (*base.Store, *base.Base, error) {
	s, err := openStore(g)
	if err != nil {
		return nil, nil, err
	}
	b, err := s.Get(id)
	return s, b, err
}

func runBaseList(g globals, stdout, stderr io.Writer) error {
	s, err := openStore(g)
	if err != nil {
		return err
	}
	bases, err := s.List()
	if err != nil {
		fmt.Fprintf(stderr, "warning: some bases are damaged and not listed:\n%v\n", err)
	}
	if g.json {
		infos := []baseInfo{}
		for _, b := range bases {
			infos = append(infos, baseJSON(b))
		}
		return json.NewEncoder(stdout).Encode(infos)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCREATED\tMEMORY\tDISK")
	for _, b := range bases {
		i := baseJSON(b)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%d MiB\n", i.ID[:16], i.Name, i.Created.Local().Format(time.DateTime), i.MemoryBytes>>20, i.DiskBytes>>20)
	}
	return tw.Flush()
}

func runBaseShow(ctx context.Context, g globals, id string, accel vm.Accel, stdout io.Writer) error {
	_, b, err := openBase(g, id)
	if err != nil {
		return err
	}
	here := checkHere(ctx, g.host(), b, accel)
	if g.json {
		return json.NewEncoder(stdout).Encode(struct {
			ID       string         `json:"id"`
			Dir      string         `json:"dir"`
			Manifest *base.Manifest `json:"manifest"`
			Hosts    string         `json:"hosts"`
			Here     hostVerdict    `json:"this_host"`
		}{b.ID, b.Dir, b.Manifest, vm.Portability(b.Manifest.VM), here})
	}
	m := b.Manifest
	fmt.Fprintf(stdout, "ID:       %s\nName:     %s\nCreated:  %s\nDir:      %s\n", b.ID, m.Name, m.Created.Local().Format(time.DateTime), b.Dir)
	fmt.Fprintf(stdout, "VM:       machine %s, cpu %s x%d, %d MiB RAM, made under %s\n", m.VM.Machine, m.VM.CPU, m.VM.CPUs, m.VM.MemoryBytes>>20, m.Accel)
	fmt.Fprintf(stdout, "Devices:  %s\n", strings.Join(m.VM.Devices, ", "))
	showPlatform(stdout, m.VM, here)
	if m.VM.Append != "" && m.Has(base.KernelFile) {
		fmt.Fprintf(stdout, "Append:   %s\n", m.VM.Append)
	}
	fmt.Fprintln(stdout, "Files:")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, name := range []string{base.DiskFile, base.MemoryFile, base.DevstateFile, base.KernelFile, base.InitrdFile, base.DiskIndexFile, base.MemoryIndexFile} {
		if f, ok := m.Files[name]; ok {
			fmt.Fprintf(tw, "  %s\t%d bytes\tsha256 %s\n", name, f.Size, f.SHA256)
		}
	}
	return tw.Flush()
}

func runBaseDelete(g globals, id string, stderr io.Writer) error {
	s, b, err := openBase(g, id)
	if err != nil {
		return err
	}
	if err := s.Delete(b.ID); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "deleted base %s\n", b.ID)
	return nil
}

func runBaseVerify(ctx context.Context, g globals, id string, stderr io.Writer) error {
	_, b, err := openBase(g, id)
	if err != nil {
		return err
	}
	if err := b.Verify(ctx, newProgress(stderr)); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "base %s: all files match the manifest\n", b.ID)
	return nil
}

// runBaseExport writes to a temporary file beside the output and renames it when complete,
// so an interrupted export never leaves a file that looks whole.
func runBaseExport(ctx context.Context, g globals, id, output string, stderr io.Writer) error {
	_, b, err := openBase(g, id)
	if err != nil {
		return err
	}
	f, err := atomicfile.Create(output)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer f.Abort()
	if err := b.Export(ctx, f, newProgress(stderr)); err != nil {
		return err
	}
	if err := f.Commit(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(stderr, "exported base %s to %s\n", b.ID, output)
	return nil
}

func runBaseImport(ctx context.Context, g globals, file string, stdout, stderr io.Writer) error {
	s, err := openStore(g)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	b, isNew, err := s.Import(ctx, f, newProgress(stderr))
	if err != nil {
		return fmt.Errorf("import %s: %w", file, err)
	}
	if g.json {
		return json.NewEncoder(stdout).Encode(baseJSON(b))
	}
	if isNew {
		fmt.Fprintf(stderr, "imported base %s\n", b.ID)
	} else {
		fmt.Fprintf(stderr, "base %s is already here\n", b.ID)
	}
	warnIfNotHere(ctx, g.host(), b, stderr)
	fmt.Fprintln(stdout, b.ID)
	return nil
}
