package vm

import (
	"encoding/json"
	"strconv"
)

// StockResume is how a stock QEMU, started by hand or by any tool with nothing of ours in the
// loop, resumes a VM: the driver's own command line (vmArgs) with the monitor on stdin and
// the device state read from an inherited descriptor (DevstateFD). QEMU 7.2 takes the
// snapshot's x-ignore-shared capability only through its monitor (there is no migration
// property for it), so QMP holds the commands that set it and load the state. A snapshot is
// taken paused, so the guest runs only after a "cont" sent once the MIGRATION event says
// "completed" (a cont sent before is forgotten at the end of the load). Script does all
// that in sh, from the files StockArgsFile, StockQMPFile and StockDevstateFile beside it.
//
// Differences from the driver, which the caller should tell its users:
//   - QEMU's MADV_HUGEPAGE advice on guest RAM stays (the driver's launcher drops it): on a
//     memory file served by FUSE, each first touch of a page then reads up to 2-4 MiB ahead,
//     so more of the memory image is read before the guest answers.
//   - The serial port is a pty (QEMU prints its name on stderr), not a socket of ours.
type StockResume struct {
	Args   []string // QEMU's arguments, without the program
	QMP    []byte   // the monitor commands before the load completes, one JSON object a line
	Script []byte   // sh: runs QEMU with Args, feeds QMP, waits for the load, sends cont
	Accel  Accel
	Why    string // why this accelerator
}

// The descriptor and file names of a stock resume.
const (
	DevstateFD        = 3
	StockArgsFile     = "qemu.args"
	StockQMPFile      = "resume.qmp"
	StockDevstateFile = "devstate"
)

// NewStockResume builds the stock resume of opts, whose Memory and Disk name the files QEMU is
// to use (the memory file is mapped privately whatever opts.Memory.Share says: a resume must
// never write it). Forwards, Config, Kernel, Initrd and Accel are used as the driver would.
func NewStockResume(opts Options) (StockResume, error) {
	if err := opts.Config.Validate(); err != nil {
		return StockResume{}, err
	}
	accel, why := chooseAccel(opts.Accel, "/sys/module")
	opts.Memory.Share = false
	args := vmArgs(opts, accel, "pty,id=serial0", "stdio,id=qmp,signal=off")
	args = append(args, "-display", "none", "-incoming", "defer")
	var qmp []byte
	for _, cmd := range []map[string]any{
		{"execute": "qmp_capabilities"},
		{"execute": "migrate-set-capabilities", "arguments": map[string]any{
			"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}, {"capability": "events", "state": true}},
		}},
		{"execute": "migrate-incoming", "arguments": map[string]any{"uri": "fd:" + strconv.Itoa(DevstateFD)}},
	} {
		b, err := json.Marshal(cmd)
		if err != nil {
			return StockResume{}, err
		}
		qmp = append(append(qmp, b...), '\n')
	}
	return StockResume{Args: args, QMP: qmp, Script: []byte(stockScript), Accel: accel, Why: why}, nil
}

// ContCommand is what the monitor gets once the load has completed.
const ContCommand = `{"execute":"cont"}`

// stockScript is Script. Its FIFOs are the monitor's stdin, kept open for the cont, and its
// stdout, read for the MIGRATION event and then drained so that QEMU never blocks on it.
const stockScript = `#!/bin/sh
# Resumes the VM whose files are beside this script with a stock QEMU:
#   sh resume.sh [PROGRAM [ARGS...]]      (default: qemu-system-x86_64)
# runs PROGRAM ARGS... followed by QEMU's arguments, one a line in qemu.args. Its monitor reads
# resume.qmp on stdin (the snapshot's capabilities, then the device state from fd 3), and gets
# "cont" once the state is loaded. The guest's serial console is a pty, which QEMU names on
# stderr. Ends with QEMU.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- qemu-system-x86_64
while IFS= read -r a; do set -- "$@" "$a"; done <"$dir/qemu.args"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/in" "$tmp/out"
"$@" <"$tmp/in" >"$tmp/out" 3<"$dir/devstate" &
pid=$!
exec 4>"$tmp/in" 5<"$tmp/out"
cat "$dir/resume.qmp" >&4
loaded=no
while IFS= read -r line <&5; do
	case $line in
	*'"MIGRATION"'*'"completed"'*) loaded=yes; break ;;
	*'"MIGRATION"'*'"failed"'*) break ;;
	esac
done
if [ $loaded = no ]; then
	echo "resume.sh: QEMU did not load the device state" >&2
	kill $pid 2>/dev/null || true
	wait $pid || true
	exit 1
fi
echo '` + ContCommand + `' >&4
cat <&5 >/dev/null &
wait $pid
`
