package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
)

func TestPublishFenced(t *testing.T) {
	ctx := context.Background()
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b, err := natsbus.New(nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.EnsureStream(ctx, natsbus.StreamSpec{Pipeline: "p", DuplicateWindow: 0})
	if err != nil {
		t.Fatal(err)
	}
	subj := bus.SourceSubject("p")

	// Reader A appends twice.
	last, dup, err := publishFenced(ctx, b.JS, st, subj, []byte("a1"), "a1", 0)
	if err != nil || last != 1 || dup {
		t.Fatalf("a1: last=%d err=%v", last, err)
	}
	last, dup, err = publishFenced(ctx, b.JS, st, subj, []byte("a2"), "a2", last)
	if err != nil || last != 2 || dup {
		t.Fatalf("a2: last=%d err=%v", last, err)
	}
	// The same publish again (its ack was lost): resolved to the stored one.
	got, dup, err := publishFenced(ctx, b.JS, st, subj, []byte("a2"), "a2", 1)
	if err != nil || got != 2 || dup {
		t.Fatalf("retry of a2: last=%d err=%v", got, err)
	}
	// A republish of an older page within the duplicate window: the
	// subject's last sequence does not move.
	got, dup, err = publishFenced(ctx, b.JS, st, subj, []byte("a1"), "a1", 2)
	if err != nil || got != 2 || !dup {
		t.Fatalf("duplicate a1: last=%d dup=%v err=%v", got, dup, err)
	}
	// Reader B takes over and appends.
	if _, _, err := publishFenced(ctx, b.JS, st, subj, []byte("b1"), "b1", 2); err != nil {
		t.Fatalf("b1: %v", err)
	}
	// A wakes up believing the last sequence is 2: refused, permanently.
	_, _, err = publishFenced(ctx, b.JS, st, subj, []byte("a3"), "a3", 2)
	if !errors.Is(err, errFenced) || !errs.IsPermanent(err) {
		t.Fatalf("zombie publish: err=%v, want a permanent errFenced", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Fatalf("stream holds %d messages, want 3 (a1, a2, b1)", info.State.Msgs)
	}
}

// A full stream (DiscardNew) refuses a publish with an error streamFull
// recognises, and keeps what it holds; other failures are not taken for it.
func TestPublishToFullStream(t *testing.T) {
	ctx := context.Background()
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b, err := natsbus.New(nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.EnsureStream(ctx, natsbus.StreamSpec{Pipeline: "p", MaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	subj := bus.SourceSubject("p")
	page := make([]byte, 1000)
	var last uint64
	var full error
	for i := 0; i < 10 && full == nil; i++ {
		var seq uint64
		seq, _, full = publishFenced(ctx, b.JS, st, subj, page, fmt.Sprintf("page-%d", i), last)
		if full == nil {
			last = seq
		}
	}
	if !streamFull(full) || !errs.IsUnavailable(full) {
		t.Fatalf("publish to a full stream: %v; want a stream-full error, retried as unavailable", full)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != last {
		t.Fatalf("the full stream is at %d, want %d (nothing dropped, nothing added)", info.State.LastSeq, last)
	}
	for _, err := range []error{nil, errors.New("maximum bytes exceeded"), errFenced,
		&jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence"}} {
		if streamFull(err) {
			t.Errorf("streamFull(%v) = true", err)
		}
	}
}

func TestJSUnavailable(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"no quorum (503)", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{"timeout", context.DeadlineExceeded, true},
		{"no responders", nats.ErrNoResponders, true},
		{"wrapped connection closed", fmt.Errorf("get: %w", nats.ErrConnectionClosed), true},
		{"stream not found (404)", &jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeStreamNotFound, Description: "stream not found"}, false},
		{"bad request (400)", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeBadRequest, Description: "bad request"}, false},
		{"permanent", errs.Permanent(errors.New("corrupt")), false},
		{"cancelled", context.Canceled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := jsUnavailable(tt.err)
			if errs.IsUnavailable(got) != tt.unavailable {
				t.Fatalf("jsUnavailable(%v) unavailable = %v, want %v", tt.err, errs.IsUnavailable(got), tt.unavailable)
			}
			if !errors.Is(got, tt.err) {
				t.Fatalf("jsUnavailable(%v) lost the cause: %v", tt.err, got)
			}
		})
	}
	if jsUnavailable(nil) != nil {
		t.Fatal("jsUnavailable(nil) != nil")
	}
}

func TestOutageWait(t *testing.T) {
	var w outageWait
	var got []time.Duration
	for range 7 {
		got = append(got, w.next(time.Second))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
	if d := w.next(2 * time.Minute); d != 500*time.Millisecond {
		t.Fatalf("after a long stint: %s, want 500ms", d)
	}
}
