//go:build unix

package jsonltarget

import (
	"os"
	"syscall"
)

// fileID tells one file from another at the same path.
type fileID struct{ dev, ino uint64 }

func identity(fi os.FileInfo) fileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)} //nolint:unconvert // Dev is int32 on some systems
	}
	return fileID{}
}
