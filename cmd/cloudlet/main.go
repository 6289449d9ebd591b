// Command cloudlet manages base VMs, overlays and VM synthesis on a cloudlet.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/vm"
)

func main() {
	// A re-exec of this binary as the QEMU launcher never returns from here.
	vm.LauncherMain()

	// One root context: SIGINT, SIGTERM and SIGHUP (a closed terminal) cancel it, and every
	// VM, mount and server stops in order.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	app := newApp(os.Stdin, os.Stdout, os.Stderr)
	err := app.RunContext(ctx, interspersed(app, os.Args))
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cloudlet: %v\n", err)
		if interrupted {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	home string
	json bool
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "cloudlet",
		Usage: "VM synthesis with early start on edge servers",
		// A repeatable flag's value is taken whole: "--exec 'python3 -c \"f(a, b)\"'" is one
		// command, not two.
		DisableSliceFlagSeparator: true,
		Description: "A base VM (disk + memory snapshot) sits on this cloudlet; small overlays turn it into custom\n" +
			"app servers. See README.md for a walk-through.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "home", Usage: "directory of bases and caches", EnvVars: []string{"CLOUDLET_HOME"}, Value: defaultHome()},
			&cli.BoolFlag{Name: "json", Usage: "print results as JSON"},
			qemuUserFlag(),
		},
		Commands: []*cli.Command{
			baseCommand(),
			mountCommand(),
			overlayCommand(),
			synthesisCommand(),
			serveCommand(),
			clientCommand(),
			sessionSupervisorCommand(),
		},
		Reader:          stdin,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // main prints errors; urfave must not exit
	}
}

func defaultHome() string {
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cloudlet")
	}
	return ".cloudlet"
}

func globalsOf(c *cli.Context) globals {
	return globals{home: c.String("home"), json: c.Bool("json")}
}

func openStore(g globals) (*base.Store, error) {
	s, err := base.Open(g.home)
	if err != nil {
		return nil, fmt.Errorf("%w (set --home or CLOUDLET_HOME)", err)
	}
	return s, nil
}

// errUsage marks errors in how a command was called.
var errUsage = errors.New("usage")
