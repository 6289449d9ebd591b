package base

import (
	"errors"
	"os"
	"path/filepath"
)

// A store holds guest disks and memory (bases, caches) and logs of what guests printed: its
// directories are 0700 and its files 0600, whatever the umask, so that no other local user
// reads a guest's secrets or changes a base.

// privateDirs are the store's top-level directories. An older version made them, and the
// home, 0755: tightening them when the store is opened closes that hole on upgrade.
var privateDirs = []string{"", "bases", "tmp", "logs"}

// makePrivate creates the store's directories 0700 and takes group and other bits away from
// those that exist: bases, caches and logs hold guest disks and memory. With the home 0700,
// nothing below it is reachable by other users, whatever the modes there.
func makePrivate(home string) error {
	for _, d := range privateDirs {
		dir := filepath.Join(home, d)
		if d == "logs" {
			if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
				continue // made by the first detached run
			}
		} else if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// privateMode is the mode of a base's file or directory.
func privateMode(e os.DirEntry) os.FileMode {
	if e.IsDir() {
		return 0o700
	}
	return 0o600
}
