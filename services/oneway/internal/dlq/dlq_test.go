package dlq

import (
	"errors"
	"path/filepath"
	"runtime"
	"testing"
)

func TestSubjectMatches(t *testing.T) {
	tests := []struct {
		filter, subject string
		want            bool
	}{
		{"oneway.p.retry.pg", "oneway.p.retry.pg", true},
		{"oneway.p.source", "oneway.p.retry.pg", false},
		{"oneway.p.retry.*", "oneway.p.retry.pg", true},
		{"oneway.p.*", "oneway.p.retry.pg", false},
		{"oneway.p.>", "oneway.p.retry.pg", true},
		{"oneway.p.retry.pg.>", "oneway.p.retry.pg", false},
		{"oneway.p.retry.pg", "oneway.p.retry", false},
	}
	for _, tt := range tests {
		if got := SubjectMatches(tt.filter, tt.subject); got != tt.want {
			t.Errorf("SubjectMatches(%q, %q) = %v, want %v", tt.filter, tt.subject, got, tt.want)
		}
	}
}

// A store locked once cannot be locked again until released.
func TestLockStore(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock")
	}
	dir := filepath.Join(t.TempDir(), "nats")
	release, err := LockStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockStore(dir); !errors.Is(err, ErrStoreInUse) {
		t.Fatalf("second lock: %v, want ErrStoreInUse", err)
	}
	release()
	release, err = LockStore(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release()
}
