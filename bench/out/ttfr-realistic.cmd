bench/ttfr.sh realistic 2
