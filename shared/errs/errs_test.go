package errs

import (
	"errors"
	"fmt"
	"testing"
)

func TestClassify(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name        string
		err         error
		permanent   bool
		unavailable bool
	}{
		{"plain", base, false, false},
		{"permanent", Permanent(base), true, false},
		{"wrapped permanent", fmt.Errorf("apply: %w", Permanent(base)), true, false},
		{"unavailable", Unavailable(base), false, true},
		{"wrapped unavailable", fmt.Errorf("connect: %w", Unavailable(base)), false, true},
		{"nil", nil, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsPermanent(tt.err); got != tt.permanent {
				t.Fatalf("IsPermanent = %v, want %v", got, tt.permanent)
			}
			if got := IsUnavailable(tt.err); got != tt.unavailable {
				t.Fatalf("IsUnavailable = %v, want %v", got, tt.unavailable)
			}
		})
	}
	if Permanent(nil) != nil || Unavailable(nil) != nil {
		t.Fatal("marking nil must stay nil")
	}
	if !errors.Is(Permanent(base), base) {
		t.Fatal("Permanent must unwrap to its cause")
	}
}
