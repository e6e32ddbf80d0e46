package natsbus

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/errs"
)

func TestClassifySetup(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		permanent bool
	}{
		{"nil", nil, false},
		{"timeout", context.DeadlineExceeded, false},
		{"no responders (no meta leader yet)", nats.ErrNoResponders, false},
		{"503 unavailable", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, false},
		{"insufficient resources while peers start", &jetstream.APIError{Code: 500, ErrorCode: 10023}, false},
		{"insufficient resources as 400", &jetstream.APIError{Code: 400, ErrorCode: 10023}, false},
		{"subjects overlap", fmt.Errorf("ensure: %w", &jetstream.APIError{Code: 400, ErrorCode: 10065, Description: "subjects overlap with an existing stream"}), true},
		{"name in use", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamNameInUse}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classifySetup(tc.err)
			if tc.err == nil {
				if got != nil {
					t.Fatalf("classifySetup(nil) = %v", got)
				}
				return
			}
			if errs.IsPermanent(got) != tc.permanent || !errors.Is(got, tc.err) {
				t.Fatalf("classifySetup(%v) = %v (permanent %v), want permanent %v wrapping it", tc.err, got, errs.IsPermanent(got), tc.permanent)
			}
		})
	}
}
