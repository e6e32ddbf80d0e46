package dlq

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrStoreInUse means another process uses an embedded NATS store.
var ErrStoreInUse = errors.New("embedded NATS store in use")

// LockStore guards an embedded NATS store directory for this process: it
// takes an exclusive lock on "<dir>.lock" (released when the process ends,
// or by the returned release), and refuses when another process has files
// of the store open. nats-server itself takes no lock, so two servers on
// one store would corrupt it.
//
// The open-files check is best effort (Linux /proc, and only files the
// server holds open: a `oneway up` that has not written since it started
// may hold none). A process that takes the same lock is always detected.
func LockStore(dir string) (release func(), err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	release, err = lockFile(abs + ".lock")
	if err != nil {
		return nil, err
	}
	if pid, ok := storeOpenBy(abs); ok {
		release()
		return nil, fmt.Errorf("%w: process %d has files under %s open", ErrStoreInUse, pid, abs)
	}
	return release, nil
}

// storeOpenBy returns another process that has a file under dir open.
func storeOpenBy(dir string) (int, bool) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	self := os.Getpid()
	prefix := dir + string(filepath.Separator)
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or another user's
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err == nil && strings.HasPrefix(target, prefix) {
				return pid, true
			}
		}
	}
	return 0, false
}
