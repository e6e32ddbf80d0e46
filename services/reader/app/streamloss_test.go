package app

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
)

func lossBus(t *testing.T) *natsbus.Bus {
	t.Helper()
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := natsbus.New(nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A publish whose stream was deleted, or whose subject lost the reader's
// last message (stream deleted and created again), fails with a permanent
// errStreamLost instead of being retried forever.
func TestPublishFencedStreamLost(t *testing.T) {
	ctx := context.Background()
	b := lossBus(t)
	spec := natsbus.StreamSpec{Pipeline: "p"}
	st, err := b.EnsureStream(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	subj := bus.SourceSubject("p")
	last, _, err := publishFenced(ctx, b.JS, st, subj, []byte("a1"), "a1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.JS.DeleteStream(ctx, bus.StreamName("p")); err != nil {
		t.Fatal(err)
	}
	_, _, err = publishFenced(ctx, b.JS, st, subj, []byte("a2"), "a2", last)
	if !errors.Is(err, errStreamLost) || !errs.IsPermanent(err) {
		t.Fatalf("publish to a deleted stream: err=%v, want a permanent errStreamLost", err)
	}
	if st, err = b.EnsureStream(ctx, spec); err != nil {
		t.Fatal(err)
	}
	_, _, err = publishFenced(ctx, b.JS, st, subj, []byte("a2"), "a2", last)
	if !errors.Is(err, errStreamLost) || !errs.IsPermanent(err) {
		t.Fatalf("publish to a stream created again: err=%v, want a permanent errStreamLost", err)
	}
}

// checkStream leaves a stream that holds the saved sequence alone; a
// stream below it (created again) gets a fresh position, saved with a
// floor, and its sequences moved above it; a stream that holds other
// messages below the floor halts the reader.
func TestCheckStream(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		saved     uint64 // the saved position's StreamSeq
		publish   int    // messages in the stream before the check
		wantFresh bool
		wantErr   bool
	}{
		{name: "stream holds the saved sequence", saved: 3, publish: 3},
		{name: "no sequence saved", saved: 0, publish: 0},
		{name: "stream created again, empty", saved: 40, publish: 0, wantFresh: true},
		{name: "stream created again, holding others' messages", saved: 40, publish: 2, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := lossBus(t)
			cfg := &config.Pipeline{Pipeline: "p"}
			r := New(cfg, b, slog.Default(), nil)
			st, err := b.EnsureStream(ctx, natsbus.PipelineStream(cfg))
			if err != nil {
				t.Fatal(err)
			}
			kv, err := b.StateKV(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			for range tc.publish {
				if _, err := b.JS.Publish(ctx, bus.DLQSubject("p", "t"), []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			saved := Position{Phase: "watermark", Watermark: "2026-01-01", StreamSeq: tc.saved}
			got, err := r.checkStream(ctx, kv, st, saved)
			if tc.wantErr {
				if err == nil || !errs.IsPermanent(err) {
					t.Fatalf("err=%v, want a permanent error", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !tc.wantFresh {
				if !tc.wantErr && !equalPos(got, saved) {
					t.Fatalf("position changed to %+v", got)
				}
				if tc.wantErr {
					assertSaved(t, ctx, kv, Position{StreamSeq: tc.saved + streamSeqMargin - 1})
				}
				return
			}
			want := Position{StreamSeq: tc.saved + streamSeqMargin - 1}
			if !equalPos(got, want) {
				t.Fatalf("position %+v, want %+v", got, want)
			}
			assertSaved(t, ctx, kv, want)
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.LastSeq != want.StreamSeq {
				t.Fatalf("stream last sequence %d, want %d", info.State.LastSeq, want.StreamSeq)
			}
			ack, err := b.JS.Publish(ctx, bus.SourceSubject("p"), []byte("next"), jetstream.WithExpectLastSequencePerSubject(0))
			if err != nil {
				t.Fatal(err)
			}
			if ack.Sequence != want.StreamSeq+1 {
				t.Fatalf("next publish at %d, want %d", ack.Sequence, want.StreamSeq+1)
			}
			// Checked again (a restart): nothing more happens.
			again, err := r.checkStream(ctx, kv, st, got)
			if err != nil || !equalPos(again, got) {
				t.Fatalf("second check: %+v, %v", again, err)
			}
		})
	}
}

func assertSaved(t *testing.T, ctx context.Context, kv jetstream.KeyValue, want Position) {
	t.Helper()
	e, err := kv.Get(ctx, bus.ReaderPositionKey("p", "source"))
	if err != nil {
		t.Fatal(err)
	}
	var got Position
	if err := json.Unmarshal(e.Value(), &got); err != nil {
		t.Fatal(err)
	}
	if !equalPos(got, want) {
		t.Fatalf("saved position %+v, want %+v", got, want)
	}
}

// A page's Msg-Id names where it starts in the source, whatever stream
// sequence the position records: a page republished after a crash follows
// duplicates, so its position's StreamSeq differs from the first publish's,
// and JetStream must still see the same Msg-Id.
func TestMsgIDIgnoresStreamSeq(t *testing.T) {
	r := New(&config.Pipeline{Pipeline: "p"}, nil, slog.Default(), nil)
	b := &onewayv1.Batch{Changes: []*onewayv1.Change{{Row: []byte("r1")}}}
	a := r.msgID(Position{Phase: "snapshot", SnapshotKey: []string{"7"}, StreamSeq: 3}, b)
	c := r.msgID(Position{Phase: "snapshot", SnapshotKey: []string{"7"}, StreamSeq: 9}, b)
	if a != c {
		t.Errorf("Msg-Id %s with stream sequence 3, %s with 9: want the same", a, c)
	}
	if d := r.msgID(Position{Phase: "snapshot", SnapshotKey: []string{"8"}}, b); d == a {
		t.Errorf("pages from different source positions share Msg-Id %s", a)
	}
}
