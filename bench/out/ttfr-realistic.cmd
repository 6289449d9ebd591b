bench/ttfr.sh realistic 1 links -- -modes profiled,unprofiled,download-first,local
