package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/api"
)

func clientCommand() *cli.Command {
	return &cli.Command{
		Name:      "client",
		Usage:     "ask a synthesis server to synthesise an overlay (uploaded or by URL)",
		UsageText: "cloudlet client -s HOST:PORT --base ID (-o FILE | -u URL) [--probe PORT[/PATH]] [--port P]...",
		Description: "Prints the server's timeline and the host addresses of the forwarded guest ports, then\n" +
			"leaves the VM running on the server. 'cloudlet client -s HOST:PORT --stop ID' stops it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Aliases: []string{"s"}, Value: "127.0.0.1:8021", Usage: "synthesis server"},
			&cli.StringFlag{Name: "base", Usage: "base ID on the server"},
			&cli.StringFlag{Name: "overlay", Aliases: []string{"o"}, Usage: "overlay file to upload"},
			&cli.StringFlag{Name: "url", Aliases: []string{"u"}, Usage: "overlay URL (http, https, or oci://REGISTRY/REPO:TAG) for the server to fetch"},
			&cli.StringFlag{Name: "probe", Usage: "guest PORT[/PATH] whose first HTTP answer the server times"},
			&cli.IntSliceFlag{Name: "port", Usage: "guest TCP port to forward (repeatable)"},
			&cli.BoolFlag{Name: "no-early-start", Usage: "fetch everything before resuming"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the server's bearer token (default: HOME/token, where 'serve' keeps its own)"},
			&cli.StringFlag{Name: "stop", Usage: "stop and delete this session instead"},
		},
		Action: runClient,
	}
}

func runClient(c *cli.Context) (err error) {
	ctx, stdout := c.Context, c.App.Writer
	server := c.String("server")
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	token, err := clientToken(c)
	if err != nil {
		return err
	}
	cl := &api.Client{Server: server, Token: token}
	defer func() { err = hintToken(err, token) }()
	if id := c.String("stop"); id != "" {
		if err := cl.Delete(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "session %s stopped\n", id)
		return nil
	}
	file, url := c.String("overlay"), c.String("url")
	if (file == "") == (url == "") || c.String("base") == "" {
		return fmt.Errorf("%w: give --base and exactly one of -o FILE or -u URL", errUsage)
	}
	req := api.SessionRequest{Base: c.String("base"), URL: url, Ports: c.IntSlice("port"), NoEarly: c.Bool("no-early-start")}
	if p := c.String("probe"); p != "" {
		port, path, _ := strings.Cut(p, "/")
		n, err := strconv.Atoi(port)
		if err != nil {
			return fmt.Errorf("--probe %q: want PORT[/PATH]", p)
		}
		req.ProbePort, req.ProbePath = n, "/"+path
		req.Ports = append(req.Ports, n)
	}
	var st api.SessionStatus
	if file != "" {
		f, ferr := os.Open(file)
		if ferr != nil {
			return ferr
		}
		defer f.Close()
		fi, _ := f.Stat()
		st, err = cl.Create(ctx, req, f, fi.Size())
	} else {
		st, err = cl.Create(ctx, req, nil, 0)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "session %s on base %s\n", st.ID, shortID(st.Base))
	var ports []string
	for p := range st.Forwards {
		ports = append(ports, p)
	}
	sort.Strings(ports)
	for _, p := range ports {
		fmt.Fprintf(stdout, "guest port %s is at %s\n", p, st.Forwards[p])
	}
	answered, complete := req.ProbePort == 0, false
	_, err = cl.Follow(ctx, st.ID, func(e synthesis.Event) bool {
		fmt.Fprintf(stdout, "%7.3fs  %-13s %9d bytes fetched  %s\n", e.Seconds, e.Name, e.Bytes, e.Detail)
		answered = answered || e.Name == "first_answer"
		complete = complete || e.Name == "complete"
		return answered && complete
	})
	if err != nil {
		return err
	}
	if !answered || !complete {
		return errors.New("the session ended before it was complete")
	}
	fmt.Fprintf(stdout, "the VM runs on the server; stop it with: cloudlet client -s %s --stop %s\n", c.String("server"), st.ID)
	return nil
}

// shortID is an ID as people read it: its first 12 characters, or all of a shorter one.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// hintToken says what to do about a 401 when the client had no token to send.
func hintToken(err error, token string) error {
	var api *api.APIError
	if token == "" && errors.As(err, &api) && api.Code == http.StatusUnauthorized {
		return fmt.Errorf("%w (no token was sent: give --token-file, or run where the server's --home is)", err)
	}
	return err
}
