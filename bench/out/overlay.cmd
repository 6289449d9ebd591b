go test ./bench -run '^$' -bench Overlay -benchtime 1x
