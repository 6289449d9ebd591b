#!/usr/bin/env bash
# Makes a base of the test guest and an app overlay for it, plus the overlay after working-set
# profiling: the shared set-up of the demo and the TTFR benchmark.
# usage: app-overlay.sh CLOUDLET GUESTDIR HOME OUTDIR [APP]   (prints the base ID on its last line)
#   APP state    (default) an HTTP app on port 8080 that answers from a small page, beside
#                24 MiB of app state in RAM that it does not read before its first answer
#   APP weights  a model server: 32 MiB of incompressible weights in RAM that its CGI on port
#                8080, /cgi-bin/weights, reads whole before it answers (over 90 % of the overlay
#                is needed before the first answer: where lazy loading can only lose)
set -euo pipefail
cloudlet=$1 guest=$2 home=$3 out=$4 app=${5:-state}
export CLOUDLET_HOME=$home
mkdir -p "$out"
. "$(dirname "$0")/lib.sh"

port=$(free_port)
echo "== cloudlet base create: boot the test guest, wait for its HTTP server, snapshot it" >&2
id=$("$cloudlet" base create --disk "$guest/rootfs.img" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
	--memory 256M --name demo --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)

# Each --exec is one line typed into the guest's serial shell.
case $app in
state)
	echo "== cloudlet overlay create: add an app (HTTP on port 8080) and 24 MiB of app state in RAM" >&2
	path=/
	steps=(
		--exec 'mkdir -p /www2 && echo "hello from the custom app" > /www2/index.html'
		--exec 'dd if=/dev/urandom of=/dev/shm/app-state bs=1M count=24 2>/dev/null'
	)
	;;
weights)
	echo "== cloudlet overlay create: add a model server (HTTP on port 8080) that reads 32 MiB of weights to answer" >&2
	path=/cgi-bin/weights
	# The CGI travels as one base64 line, free of quoting; the weights are random bytes, as
	# incompressible as real ones.
	cgi='#!/bin/sh
# Loads the model whole before it answers.
dd if=/dev/shm/weights of=/dev/null bs=1M 2>/dev/null
printf "Content-Type: text/plain\r\n\r\nweights loaded\n"'
	steps=(
		--exec "mkdir -p /www2/cgi-bin && echo $(printf '%s\n' "$cgi" | base64 -w0) | base64 -d >/www2$path && chmod +x /www2$path"
		--exec 'dd if=/dev/urandom of=/dev/shm/weights bs=1M count=32 2>/dev/null'
	)
	;;
*)
	echo "app-overlay.sh: unknown app $app (want state or weights)" >&2
	exit 2
	;;
esac
p80=$(free_port) p8080=$(free_port)
"$cloudlet" overlay create "$id" "${steps[@]}" --exec 'httpd -p 8080 -h /www2' \
	--hostfwd "tcp:127.0.0.1:$p80-:80" --hostfwd "tcp:127.0.0.1:$p8080-:8080" --ready "http://127.0.0.1:$p8080$path" \
	-o "$out/app.overlay" >/dev/null

echo "== cloudlet overlay profile: record what the app touches until it answers, fetch that first" >&2
port=$(free_port)
"$cloudlet" overlay profile "$out/app.overlay" --base "$id" -o "$out/app.profiled.overlay" \
	--hostfwd "tcp:127.0.0.1:$port-:8080" --probe "http://127.0.0.1:$port$path" >/dev/null
echo "$id"
