bench/ttfr.sh test 5
