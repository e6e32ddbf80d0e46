package app

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
)

// headerMsg is a jetstream.Msg with headers only.
type headerMsg struct {
	jetstream.Msg
	h nats.Header
}

func (m headerMsg) Headers() nats.Header { return m.h }

// A retry is applied with its original sequence; without a valid one,
// earlier than the retry itself, it is a permanent error.
func TestOriginalSequence(t *testing.T) {
	h := &handler{w: &Writer{cfg: &config.Pipeline{Pipeline: "p"}}}
	meta := &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 100}}
	tests := []struct {
		name    string
		subject string
		seq     string
		want    uint64
	}{
		{"original sequence", bus.SourceSubject("p"), "42", 42},
		{"no subject header", "", "42", 42},
		{"no sequence", bus.SourceSubject("p"), "", 0},
		{"not a number", bus.SourceSubject("p"), "x", 0},
		{"zero", bus.SourceSubject("p"), "0", 0},
		{"not earlier than the retry", bus.SourceSubject("p"), "100", 0},
		{"another subject", bus.RetrySubject("p", "pg"), "42", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := nats.Header{}
			if tt.subject != "" {
				hdr.Set(bus.HeaderSubject, tt.subject)
			}
			if tt.seq != "" {
				hdr.Set(bus.HeaderSequence, tt.seq)
			}
			got, err := h.originalSequence(headerMsg{h: hdr}, meta)
			if tt.want == 0 {
				if err == nil || !errs.IsPermanent(err) {
					t.Fatalf("got %d, %v; want a permanent error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

// The writers' consumer receives the source subject and the target's retry
// subject, nothing else (not the DLQ, not another target's retries).
func TestConsumerSpecReceivesRetries(t *testing.T) {
	cfg := &config.Pipeline{Pipeline: "p"}
	spec := ConsumerSpec(cfg, config.Target{Name: "pg"})
	want := []string{bus.SourceSubject("p"), bus.RetrySubject("p", "pg")}
	if spec.FilterSubject != "" || len(spec.FilterSubjects) != 2 || spec.FilterSubjects[0] != want[0] || spec.FilterSubjects[1] != want[1] {
		t.Fatalf("filters %q %q, want %q", spec.FilterSubject, spec.FilterSubjects, want)
	}
}

// In staged mode the writers apply the differ's pushes to their target,
// not the source; retries come as before, and a retry of a push keeps it.
func TestStagedWriterConsumesPushes(t *testing.T) {
	cfg := &config.Pipeline{Pipeline: "p", Mode: config.ModeStaged}
	spec := ConsumerSpec(cfg, config.Target{Name: "pg"})
	want := []string{bus.PushSubject("p", "pg"), bus.RetrySubject("p", "pg")}
	if len(spec.FilterSubjects) != 2 || spec.FilterSubjects[0] != want[0] || spec.FilterSubjects[1] != want[1] {
		t.Fatalf("filters %q, want %q", spec.FilterSubjects, want)
	}
	h := &handler{w: &Writer{cfg: cfg, target: config.Target{Name: "pg"}}}
	meta := &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 100}}
	for subject, ok := range map[string]bool{bus.PushSubject("p", "pg"): true, bus.SourceSubject("p"): true, bus.PushSubject("p", "other"): false} {
		hdr := nats.Header{}
		hdr.Set(bus.HeaderSubject, subject)
		hdr.Set(bus.HeaderSequence, "42")
		_, err := h.originalSequence(headerMsg{h: hdr}, meta)
		if (err == nil) != ok {
			t.Fatalf("retry of a change from %s: err %v, want ok=%v", subject, err, ok)
		}
	}
}
