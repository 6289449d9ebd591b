package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
)

// sessionSupervisorCommand is the process that 'serve' starts for each session: it runs the
// session and outlives the server.
func sessionSupervisorCommand() *cli.Command {
	return &cli.Command{
		Name:   "session-supervisor",
		Hidden: true,
		Usage:  "run one session of the synthesis server (started by serve)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Required: true, Usage: "the session's directory"},
		},
		Action: func(c *cli.Context) error {
			store, err := openStore(globalsOf(c))
			if err != nil {
				return err
			}
			return supervisor.Main(c.Context, supervisor.Dir(c.String("dir")), store, c.App.ErrWriter)
		},
	}
}

// sessionsDir is where the server's sessions keep their state.
func sessionsDir(store *base.Store) string { return filepath.Join(store.Home(), "sessions") }

// supervisorStarter starts this binary as a session's supervisor, in a session of its own
// (setsid): no signal to the server's process group, nor the server's death, reaches it. Its
// output goes to the session's log.
func supervisorStarter(store *base.Store) func(supervisor.Dir) (*exec.Cmd, error) {
	return func(dir supervisor.Dir) (*exec.Cmd, error) {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		log, err := os.OpenFile(dir.Log(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", dir.ID(), err)
		}
		defer log.Close()
		cmd := exec.Command(self, "--home", store.Home(), "session-supervisor", "--dir", string(dir))
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("session %s: start supervisor: %w", dir.ID(), err)
		}
		return cmd, nil
	}
}
