go test ./bench -run '^$' -bench Sequential -benchtime 20x -count 3
