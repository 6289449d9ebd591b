bench/ttfr.sh realistic 1 slow
