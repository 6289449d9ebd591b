package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/synthesis/api"
)

// tokenFileName is the server's token under --home, made by the first 'serve' that runs
// without --token-file and read by 'client' on the same host by default.
const tokenFileName = "token"

func defaultTokenPath(g globals) string { return filepath.Join(g.home, tokenFileName) }

// serveTokens are the tokens 'serve' accepts: those of --token-file, or else the one in
// HOME/token, made on first use. It says on stderr where they are.
func serveTokens(c *cli.Context, stderr io.Writer) ([]string, error) {
	if f := c.String("token-file"); f != "" {
		tokens, err := api.ReadTokenFile(f)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		fmt.Fprintf(stderr, "clients authenticate with one of the %d tokens in %s\n", len(tokens), f)
		return tokens, nil
	}
	path := defaultTokenPath(globalsOf(c))
	created, err := api.EnsureTokenFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w (or give --token-file)", err)
	}
	tokens, err := api.ReadTokenFile(path)
	if err != nil {
		return nil, err
	}
	what := "the token in"
	if created {
		what = "a new token, written to"
	}
	fmt.Fprintf(stderr, "clients authenticate with %s %s ('cloudlet client' on this host reads it)\n", what, path)
	return tokens, nil
}

// clientToken is the token 'client' sends: the first of --token-file, or else the one in
// HOME/token if there is one there.
func clientToken(c *cli.Context) (string, error) {
	path, explicit := c.String("token-file"), true
	if path == "" {
		path, explicit = defaultTokenPath(globalsOf(c)), false
	}
	tokens, err := api.ReadTokenFile(path)
	if !explicit && errors.Is(err, os.ErrNotExist) {
		return "", nil // the server will say 401; the error names --token-file
	}
	if err != nil && explicit {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if err != nil {
		return "", fmt.Errorf("%w (or give --token-file)", err)
	}
	return tokens[0], nil
}

// allowedOrigins parses the repeatable --allow-origin CIDR flag.
func allowedOrigins(c *cli.Context) ([]netip.Prefix, error) {
	p, err := netguard.ParsePrefixes(c.StringSlice("allow-origin"))
	if err != nil {
		return nil, fmt.Errorf("--allow-origin: %w", err)
	}
	return p, nil
}
