#!/usr/bin/env bash
# The demo: make a base from the test guest, resume it, and show the time to its first HTTP
# answer. usage: demo.sh CLOUDLET GUESTDIR HOME
set -euo pipefail
cloudlet=$1 guest=$2 home=$3
export CLOUDLET_HOME=$home

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

port=$(free_port)
echo "== cloudlet base create (boots the test guest, waits for HTTP, snapshots it)"
id=$("$cloudlet" base create --disk "$guest/rootfs.img" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
	--memory 256M --name demo --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)
echo "base ID: $id"
"$cloudlet" base list

port=$(free_port)
echo
echo "== cloudlet base resume (from the snapshot: running, not booting)"
out=$(mktemp)
"$cloudlet" base resume "$id" --hostfwd "tcp:127.0.0.1:$port-:80" --probe "http://127.0.0.1:$port/cgi-bin/hello" >"$out" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 1 600); do
	grep -q 'first answer' "$out" && break
	kill -0 $pid 2>/dev/null || { echo "resume failed"; exit 1; }
	sleep 0.1
done
echo "guest says: $(curl -fsS "http://127.0.0.1:$port/cgi-bin/hello" | head -n1)"
echo "TTFR (resume to first HTTP answer): $(sed -n 's/^first answer after \([0-9.]*s\).*/\1/p' "$out")"
