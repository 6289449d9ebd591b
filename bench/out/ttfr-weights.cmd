bench/ttfr.sh weights 2 links -- -modes profiled,unprofiled,download-first,local
