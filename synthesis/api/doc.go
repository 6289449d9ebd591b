// Package api is the synthesis server's HTTP/JSON API and its client. Clients are strangers:
// every request carries a bearer token, a session belongs to the token that made it, and
// every resource a request can hold (session slots, forwards, upload time, request time) is
// bounded (see limits.go and docs/security.md).
//
// The handlers run sessions through a small hook (ServerOptions.run, synthesis.Run by
// default), so the API is tested without QEMU: the tests put a stand-in there.
package api
