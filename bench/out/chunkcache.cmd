bench/chunkcache.sh 2
