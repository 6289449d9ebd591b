bench/ttfr.sh weights 2
