go test ./bench -run '^$' -bench 'Random|Demand' -benchtime 4000x -count 3
