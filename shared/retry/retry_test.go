package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/errs"
)

func TestDo(t *testing.T) {
	fast := Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond, Attempts: 3}
	boom := errors.New("boom")
	tests := []struct {
		name      string
		failures  []error // returned by successive calls, then nil
		wantCalls int
		wantErr   bool
	}{
		{"ok first time", nil, 1, false},
		{"transient then ok", []error{boom, boom}, 3, false},
		{"transient exhausts attempts", []error{boom, boom, boom, boom}, 3, true},
		{"permanent stops at once", []error{errs.Permanent(boom)}, 1, true},
		{"unavailable does not count", []error{errs.Unavailable(boom), errs.Unavailable(boom), errs.Unavailable(boom), boom, boom}, 6, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := Do(context.Background(), fast, func(context.Context) error {
				calls++
				if calls <= len(tt.failures) {
					return tt.failures[calls-1]
				}
				return nil
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if calls != tt.wantCalls {
				t.Fatalf("calls = %d, want %d", calls, tt.wantCalls)
			}
		})
	}
}

func TestDoStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := Do(ctx, Policy{Initial: time.Hour, Max: time.Hour}, func(context.Context) error {
		calls++
		cancel()
		return errs.Unavailable(errors.New("down"))
	})
	if err == nil || calls != 1 {
		t.Fatalf("err = %v calls = %d; want an error after one call", err, calls)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want it to include context.Canceled", err)
	}
}
