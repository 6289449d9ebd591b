package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/vm"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "run the synthesis server (HTTP/JSON API)",
		UsageText: "cloudlet serve [--listen 127.0.0.1:8021] [--token-file F]",
		Description: "Endpoints: GET /v1/bases; POST /v1/sessions (JSON {base, url, ports, probe_port, probe_path}, or\n" +
			"the overlay itself as application/octet-stream with those in the query); GET /v1/sessions/ID;\n" +
			"GET /v1/sessions/ID/events (server-sent events); DELETE /v1/sessions/ID. A listener that is\n" +
			"not loopback needs --token-file: clients then send 'Authorization: Bearer TOKEN'.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8021", Usage: "address to listen on"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the bearer token clients must send"},
			&cli.IntFlag{Name: "max-sessions", Value: 2, Usage: "sessions that may run at once"},
			&cli.StringFlag{Name: "max-upload", Value: "8G", Usage: "largest overlay upload"},
			&cli.StringFlag{Name: "accel", Value: "auto", Usage: "accelerator for the VMs: auto, kvm or tcg"},
		}, driverFlags()...),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	ctx, stderr := c.Context, c.App.ErrWriter
	host, _, err := net.SplitHostPort(c.String("listen"))
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	token := ""
	if f := c.String("token-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return fmt.Errorf("--token-file %s is empty", f)
		}
	}
	if ip := net.ParseIP(host); token == "" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %s is reachable from other hosts: give --token-file", c.String("listen"))
	}
	maxUpload, err := vm.ParseSize(c.String("max-upload"))
	if err != nil {
		return fmt.Errorf("--max-upload: %w", err)
	}
	accel, err := vm.ParseAccel(c.String("accel"))
	if err != nil {
		return err
	}
	vmo := vm.Options{Accel: accel, Log: stderr}
	if vmo.Driver, vmo.Libvirt, err = parseDriver(c); err != nil {
		return err
	}
	store, err := openStore(globalsOf(c))
	if err != nil {
		return err
	}
	logger := log.New(stderr, "", log.LstdFlags)
	srv := synthesis.NewServer(ctx, synthesis.ServerOptions{Store: store, ForwardHost: host, Token: token,
		MaxSessions: c.Int("max-sessions"), MaxUpload: maxUpload, VM: vmo, Log: logger})
	l, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(c.App.Writer, "serving on http://%s\n", l.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err = hs.Serve(l)
	srv.Wait() // every session's VM is stopped and its mount gone
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
