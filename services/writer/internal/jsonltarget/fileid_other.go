//go:build !unix

package jsonltarget

import "os"

// fileID tells one file from another at the same path; without inode
// numbers, rotation is not detected.
type fileID struct{ dev, ino uint64 }

func identity(os.FileInfo) fileID { return fileID{} }
