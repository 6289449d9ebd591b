bench/ttfr.sh realistic 3
