bench/ttfr.sh test 4 rtt
