bench/ttfr.sh test 3
