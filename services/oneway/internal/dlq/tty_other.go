//go:build !linux

package dlq

import "os"

// IsTerminal reports whether f is a character device (not exact: /dev/null
// is one too; Linux asks the terminal driver).
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
