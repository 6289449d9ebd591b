bench/chunkcache.sh 3
