package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/registry"
	"github.com/cloudlet/cloudlet/synthesis/api"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "run the synthesis server (HTTP/JSON API)",
		UsageText: "cloudlet serve [--listen 127.0.0.1:8021] [--token-file F] [--allow-origin CIDR]...",
		Description: "Endpoints: GET /v1/bases; POST /v1/sessions (JSON {base, url, ports, probe_port, probe_path}, or\n" +
			"the overlay itself as application/octet-stream with those in the query); GET /v1/sessions/ID;\n" +
			"GET /v1/sessions/ID/events (server-sent events); DELETE /v1/sessions/ID. Every request sends\n" +
			"'Authorization: Bearer TOKEN', on any listener: the tokens are those of --token-file (one a\n" +
			"line), or else the one in HOME/token, made on first use; a token's holder sees only its own\n" +
			"sessions. Overlay URLs on loopback, private, link-local or multicast addresses are refused\n" +
			"unless --allow-origin allows their range. Each session runs in a supervisor process of its own:\n" +
			"stopping the server leaves sessions running (unless --stop-sessions-on-exit), and the next server\n" +
			"adopts them. A session forwards at most 16 ports; an upload\n" +
			"that stalls for --upload-idle fails its session; ended sessions are forgotten after 10 minutes.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8021", Usage: "address to listen on"},
			&cli.StringFlag{Name: "token-file", Usage: "file of the bearer tokens clients may send, one a line (default: HOME/token, made if missing)"},
			&cli.StringSliceFlag{Name: "allow-origin", Usage: "CIDR range overlay URLs may reach although it is not public (repeatable)"},
			&cli.IntFlag{Name: "max-sessions", Value: 2, Usage: "sessions that may run at once"},
			&cli.StringFlag{Name: "max-upload", Value: "8G", Usage: "largest overlay upload"},
			&cli.StringFlag{Name: "max-overlay", Value: "8G", Usage: "largest overlay, by the size its origin claims, checked before any of it is read"},
			&cli.DurationFlag{Name: "upload-idle", Value: api.DefaultUploadIdle, Usage: "how long an upload may send nothing before its session fails"},
			&cli.BoolFlag{Name: "stop-sessions-on-exit", Usage: "stop every session when the server stops (by default they run on, and the next server adopts them)"},
			&cli.StringFlag{Name: "accel", Value: "auto", Usage: "accelerator for the VMs: auto, kvm or tcg"},
			&cli.StringFlag{Name: "docker-config", Usage: "docker config file with the credentials for oci:// references (default: this user's)"},
			&cli.BoolFlag{Name: "plain-http", Usage: "read oci:// references over plain HTTP (only registries on a network you trust)"},
			chunkCacheFlag(),
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
	allow, err := allowedOrigins(c)
	if err != nil {
		return err
	}
	maxUpload, err := vm.ParseSize(c.String("max-upload"))
	if err != nil {
		return fmt.Errorf("--max-upload: %w", err)
	}
	maxOverlay, err := vm.ParseSize(c.String("max-overlay"))
	if err != nil {
		return fmt.Errorf("--max-overlay: %w", err)
	}
	accel, err := vm.ParseAccel(c.String("accel"))
	if err != nil {
		return err
	}
	// Sessions run in this process, and supervised ones, share one probe of QEMU, kept under the
	// home.
	vmo := vm.Options{Accel: accel, Log: stderr, Host: globalsOf(c).host()}
	if vmo.Driver, vmo.Libvirt, err = parseDriver(c); err != nil {
		return err
	}
	if vmo.Network, err = vm.ParseNetwork(c.String("guest-net")); err != nil {
		return fmt.Errorf("--guest-net: %w", err)
	}
	if vmo.RunAs, err = parseQEMUUser(c); err != nil {
		return err
	}
	store, err := openStore(globalsOf(c))
	if err != nil {
		return err
	}
	chunks, err := openChunkCache(c, store.Home())
	if err != nil {
		return err
	}
	if chunks != nil {
		defer chunks.Close()
	}
	tokens, err := serveTokens(c, stderr)
	if err != nil {
		return err
	}
	logger := log.New(stderr, "", log.LstdFlags)
	srv := api.NewServer(ctx, api.ServerOptions{Store: store, ForwardHost: host, Tokens: tokens, AllowOrigins: allow,
		HTTP:        origin.HTTPOptions{OCI: origin.OCIOptions{Registry: registry.Options{PlainHTTP: c.Bool("plain-http"), DockerConfig: c.String("docker-config")}}},
		MaxSessions: c.Int("max-sessions"), MaxUpload: maxUpload, MaxOverlay: maxOverlay, UploadIdle: c.Duration("upload-idle"), VM: vmo, Log: logger,
		Sessions: sessionsDir(store), StartSupervisor: supervisorStarter(store), StopOnExit: c.Bool("stop-sessions-on-exit"), Chunks: chunks})
	l, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	hs := srv.HTTPServer() // with the API's timeouts
	fmt.Fprintf(c.App.Writer, "serving on http://%s\n", l.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err = hs.Serve(l)
	srv.Wait() // every session is stopped, or left to its supervisor
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
