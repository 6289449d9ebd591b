bench/ttfr.sh weights 3
