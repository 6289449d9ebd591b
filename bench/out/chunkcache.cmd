bench/chunkcache.sh 1
