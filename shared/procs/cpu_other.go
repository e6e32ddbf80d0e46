//go:build !unix

package procs

import "time"

// processCPU is unknown here: the Governor stays off.
func processCPU() (time.Duration, bool) { return 0, false }
