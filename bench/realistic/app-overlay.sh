#!/usr/bin/env bash
# Makes a base of the realistic guest (build.sh) and an overlay that installs a Python/numpy
# inference app on it (app.py, HTTP on port 8080, a 24 MiB model), plus the overlay after
# working-set profiling: testdata/app-overlay.sh for a real distribution and a real app.
# usage: app-overlay.sh CLOUDLET GUESTDIR HOME OUTDIR   (prints the base ID on its last line)
set -euo pipefail
cloudlet=$1 guest=$2 home=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
export CLOUDLET_HOME=$home
mkdir -p "$out"
. "$here/../../testdata/lib.sh"

port=$(free_port)
echo "== cloudlet base create: boot the Debian guest, wait for its HTTP server, snapshot it" >&2
id=$("$cloudlet" base create --disk "$guest/rootfs.img" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
	--memory 512M --name realistic --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)

# Each --exec is one line typed into the guest's serial shell, and a tty line holds at most 4095
# bytes: so the Python sources travel as single base64 lines, free of any quoting. The model is made in the guest with a fixed
# seed: the same weights every run, and incompressible like real ones. setsid -f detaches the
# server so it outlives its exec step (a trailing '&' would not parse: cloudlet appends
# '; echo ...' to each command).
make_model='import numpy as np
w = np.random.default_rng(2013).standard_normal((1536, 4096), dtype=np.float32)  # 24 MiB
np.save("/opt/app/model.npy", w)'
echo "== cloudlet overlay create: install the app and its model, start it (HTTP on port 8080)" >&2
p80=$(free_port) p8080=$(free_port)
"$cloudlet" overlay create "$id" \
	--exec "mkdir -p /opt/app && echo $(base64 -w0 "$here/app.py") | base64 -d >/opt/app/app.py" \
	--exec "echo $(echo "$make_model" | base64 -w0) | base64 -d | python3" \
	--exec 'setsid -f python3 /opt/app/app.py </dev/null >/var/log/app.log 2>&1' \
	--hostfwd "tcp:127.0.0.1:$p80-:80" --hostfwd "tcp:127.0.0.1:$p8080-:8080" --ready "http://127.0.0.1:$p8080/" \
	-o "$out/app.overlay" >/dev/null

echo "== cloudlet overlay profile: record what the app touches until it answers, fetch that first" >&2
port=$(free_port)
"$cloudlet" overlay profile "$out/app.overlay" --base "$id" -o "$out/app.profiled.overlay" \
	--hostfwd "tcp:127.0.0.1:$port-:8080" --probe "http://127.0.0.1:$port/" >/dev/null
echo "$id"
