# Shell helpers shared by the demo and benchmark scripts (sourced, not run).

# free_port prints a loopback TCP port that nothing listens on (bash only: a fresh machine
# need not have python).
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}
