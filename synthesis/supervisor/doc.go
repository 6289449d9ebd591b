// Package supervisor runs one synthesis session in a process of its own, so that the session
// outlives the API server that started it: the server may be restarted, upgraded or killed,
// and the VM keeps running.
//
// A session's state lives in its directory (0700): the request it was started with, its
// timeline as append-only JSON lines, its final state once it ended, the upload spool, the
// cache and the mount point, and a unix socket (0600) over which the supervisor answers its
// status, streams its events and takes a stop. QEMU dies with its supervisor (the driver's
// parent-death signal), so a supervisor that dies fails closed: no guest runs on without the
// process that verifies its bytes.
package supervisor
