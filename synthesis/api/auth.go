package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
)

// Every request to the API carries a bearer token, whatever the listener: a guest reaches
// the host's loopback through QEMU's user network, so "only local clients" is no boundary.
// Each session belongs to the token that made it; another token's holder can neither see nor
// stop it.

// owner names a token without holding it: a session keeps this, never the secret.
type owner string

type ownerKey struct{}

// authenticate returns the owner of the request's token, comparing against every configured
// token in constant time, or false if none matches.
func (s *Server) authenticate(r *http.Request) (owner, bool) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || got == "" {
		return "", false
	}
	// Digests of equal length, all compared: the time taken tells neither which token was
	// close nor how long the tokens are.
	sum := sha256.Sum256([]byte(got))
	match := 0
	for _, t := range s.opts.Tokens {
		want := sha256.Sum256([]byte(t))
		match |= subtle.ConstantTimeCompare(sum[:], want[:])
	}
	if match != 1 {
		return "", false
	}
	return owner(hex.EncodeToString(sum[:8])), true
}

// requireToken answers 401 to a request without a valid token, and passes the others on with
// their owner in the context.
func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cloudlet"`)
			jsonError(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token (see 'cloudlet serve --help')"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ownerKey{}, who)))
	})
}

// ownerOf is the owner requireToken found for r.
func ownerOf(r *http.Request) owner {
	who, _ := r.Context().Value(ownerKey{}).(owner)
	return who
}

// ParseTokens reads a token file: one token a line; blank lines and lines starting with #
// are skipped. A token is printable ASCII without spaces, at least 16 characters.
func ParseTokens(b []byte) ([]string, error) {
	var out []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < minTokenLen {
			return nil, fmt.Errorf("line %d: token of %d characters, want at least %d", i+1, len(line), minTokenLen)
		}
		for _, c := range line {
			if c <= ' ' || c > '~' {
				return nil, fmt.Errorf("line %d: a token is printable ASCII without spaces", i+1)
			}
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		return nil, errors.New("no token in it")
	}
	return out, nil
}

// minTokenLen keeps guessable tokens out; a generated one has 64 hex digits.
const minTokenLen = 16

// ReadTokenFile reads the tokens of the file at path.
func ReadTokenFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	tokens, err := ParseTokens(b)
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	return tokens, nil
}

// EnsureTokenFile makes sure a private token file exists at path: it keeps an existing one
// (clients hold its token across server restarts) and otherwise writes a new random token,
// atomically, readable by its owner only. It tells whether it made the file.
func EnsureTokenFile(path string) (created bool, err error) {
	if fi, err := os.Stat(path); err == nil {
		if fi.Mode().Perm()&0o077 != 0 {
			return false, fmt.Errorf("token file %s: mode %o lets others read it, want 0600", path, fi.Mode().Perm())
		}
		_, err := ReadTokenFile(path)
		return false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("token file: %w", err)
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	if err := atomicfile.WriteNew(path, []byte(hex.EncodeToString(raw)+"\n")); errors.Is(err, os.ErrExist) {
		return false, nil // another server made it first: use that one
	} else if err != nil {
		return false, fmt.Errorf("token file: %w", err)
	}
	return true, nil
}
