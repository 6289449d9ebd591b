package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/vm"
)

// defaultChunkCacheSize bounds the chunk cache: a few apps' overlays of some hundred MB each.
const defaultChunkCacheSize = "4G"

// chunkCacheDir is where the cache of verified overlay chunks that every synthesis on this
// cloudlet shares lives, under --home.
func chunkCacheDir(home string) string { return filepath.Join(home, "chunks") }

func chunkCacheFlag() cli.Flag {
	return &cli.StringFlag{Name: "chunk-cache-size", Value: defaultChunkCacheSize, EnvVars: []string{"CLOUDLET_CHUNK_CACHE_SIZE"},
		Usage: "bound of HOME/chunks, the verified overlay chunks shared by every synthesis here (K, M or G); 0 turns it off"}
}

// openChunkCache opens the shared chunk cache, or returns nil if --chunk-cache-size is 0.
func openChunkCache(c *cli.Context, home string) (*chunkstore.Store, error) {
	v := c.String("chunk-cache-size")
	if strings.TrimSpace(v) == "0" {
		return nil, nil
	}
	n, err := vm.ParseSize(v)
	if err != nil {
		return nil, fmt.Errorf("--chunk-cache-size: %w", err)
	}
	return chunkstore.Open(chunkCacheDir(home), n)
}
