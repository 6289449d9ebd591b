go test ./bench -run '^$' -bench SharedMmapDirty -benchtime 3x -count 2
