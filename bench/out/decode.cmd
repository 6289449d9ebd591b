go test ./overlay -run '^$' -bench BlobDecode -count 3
