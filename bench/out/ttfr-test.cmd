bench/ttfr.sh test 2
