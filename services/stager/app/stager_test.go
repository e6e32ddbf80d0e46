package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/sqlitestage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pipelineYAML = `pipeline: inv
mode: staged
nats:
  url: %s
source:
  kind: postgres
  url: postgres://x@h/db
  table: public.invoices
  key: [id]
  columns: [id, customer, updated_at]
  capture:
    column: updated_at
targets:
  - name: pg
    kind: postgres
    url: postgres://x@h/t
`

// batch builds a batch of rows (nil = NULL) over cols; the first column is
// the key. A row whose other values are all nil is a delete.
func batch(origin string, cols []string, rows ...[]*string) *onewayv1.Batch {
	b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: "inv", Origin: origin, Table: "public.invoices"}
	for i, c := range cols {
		b.Columns = append(b.Columns, &onewayv1.Column{Name: c, Type: "text", Key: i == 0})
	}
	for _, r := range rows {
		vals := make([][]byte, len(r))
		del := true
		for i, v := range r {
			if v != nil {
				vals[i] = []byte(*v)
				if i > 0 {
					del = false
				}
			}
		}
		c := &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: event.PackRow(vals)}
		if del {
			c.Op = onewayv1.Op_OP_DELETE
		} else {
			c.Hash = event.RowHash(c.Row)
		}
		b.Changes = append(b.Changes, c)
	}
	return b
}

func s(v string) *string { return &v }

type harness struct {
	t      *testing.T
	cfg    *config.Pipeline
	bus    *natsbus.Bus
	store  stage.Store
	cancel func()
	done   chan error
}

func start(t *testing.T) *harness {
	t.Helper()
	_, url := bustest.StartJetStream(t)
	cfg, err := config.Parse("p.yaml", []byte(fmt.Sprintf(pipelineYAML, url)), nil)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	b, err := natsbus.Connect(ctx, url, "test", log)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	store, err := sqlitestage.Open(ctx, sqlitestage.Config{Dir: t.TempDir(), Pipeline: "inv"})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	_, err = b.EnsureStream(ctx, natsbus.PipelineStream(cfg))
	require.NoError(t, err)
	h := &harness{t: t, cfg: cfg, bus: b, store: store}
	h.run()
	return h
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := New(h.cfg, h.bus, h.store, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.NoError(h.t, err)
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- st.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	require.NoError(h.t, <-h.done)
	h.cancel = nil
}

func (h *harness) publish(subject string, b *onewayv1.Batch) uint64 {
	h.t.Helper()
	data, err := event.Encode(b)
	require.NoError(h.t, err)
	ack, err := h.bus.JS.Publish(context.Background(), subject, data)
	require.NoError(h.t, err)
	return ack.Sequence
}

// staged reads every Staged message on the pipeline's staged subject.
func (h *harness) staged() []*onewayv1.Staged {
	h.t.Helper()
	ctx := context.Background()
	c, err := h.bus.JS.OrderedConsumer(ctx, bus.StreamName("inv"), jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.StagedSubject("inv")}})
	require.NoError(h.t, err)
	var out []*onewayv1.Staged
	for {
		msgs, err := c.FetchNoWait(100)
		require.NoError(h.t, err)
		n := 0
		for m := range msgs.Messages() {
			var st onewayv1.Staged
			require.NoError(h.t, proto.Unmarshal(m.Data(), &st))
			out = append(out, &st)
			n++
		}
		if n == 0 {
			return out
		}
	}
}

func (h *harness) waitStaged(n int) []*onewayv1.Staged {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := h.staged()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d staged messages, want %d", len(got), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) join(target string, keys ...string) []stage.Pair {
	h.t.Helper()
	pairs, err := h.store.Join(context.Background(), target, keys)
	require.NoError(h.t, err)
	return pairs
}

func row(vals ...string) []byte {
	b := make([][]byte, len(vals))
	for i, v := range vals {
		if v != "<null>" {
			b[i] = []byte(v)
		}
	}
	return event.PackRow(b)
}

// Source, read-back and applied reports are staged on their sides, in the
// stage layout (owned columns in config order, whatever the batch's order;
// other columns dropped), at their versions; the touched keys are handed on.
func TestStagesEverySide(t *testing.T) {
	h := start(t)
	// The source's columns in another order, plus one that is not owned.
	srcSeq := h.publish(bus.SourceSubject("inv"), batch("source", []string{"id", "updated_at", "secret", "customer"},
		[]*string{s("1"), s("n1"), s("x"), s("alice")},
		[]*string{s("2"), nil, s("y"), s("bob")},
		[]*string{s("3"), nil, nil, nil}, // a delete
	))
	tgtSeq := h.publish(bus.TargetSubject("inv", "pg"), batch("target.pg", []string{"id", "customer", "updated_at", "crm_notes"},
		[]*string{s("1"), s("alice"), s("edited"), s("hand-made")},
		[]*string{s("9"), s("orphan"), nil, nil},
	))
	h.publish(bus.AppliedSubject("inv", "pg"), func() *onewayv1.Batch {
		b := batch("applied.pg", []string{"id", "customer", "updated_at"}, []*string{s("2"), s("bob"), nil})
		b.Changes[0].Version = uint64(event.Version(srcSeq+100, 3))
		return b
	}())

	got := h.waitStaged(3)
	sides := map[string][]string{}
	for _, st := range got {
		require.Equal(t, "inv", st.GetPipeline())
		sides[st.GetSide()] = append(sides[st.GetSide()], st.GetKeys()...)
	}
	require.Equal(t, []string{"1", "2", "3"}, sides["source"])
	require.ElementsMatch(t, []string{"1", "9", "2"}, sides["target.pg"])

	pairs := h.join("pg", "1", "2", "3", "9")
	require.Len(t, pairs, 4)
	p1 := pairs[0]
	require.Equal(t, row("1", "alice", "n1"), p1.Source.Row, "repacked in the stage order, secret dropped")
	require.Equal(t, event.RowHash(p1.Source.Row), p1.Source.Hash)
	require.Equal(t, event.Version(srcSeq, 0), p1.Source.Version)
	require.Equal(t, row("1", "alice", "edited"), p1.Target.Row, "crm_notes is not owned")
	require.Equal(t, event.Version(tgtSeq, 0), p1.Target.Version)
	p2 := pairs[1]
	require.Equal(t, row("2", "bob", "<null>"), p2.Source.Row)
	require.Equal(t, event.Version(srcSeq+100, 3), p2.Target.Version, "an applied report stages at the version it was applied at")
	p3 := pairs[2]
	require.True(t, p3.Source.Deleted)
	require.Nil(t, p3.Target)
	p9 := pairs[3]
	require.Nil(t, p9.Source)
	require.Equal(t, []string{"9"}, p9.Target.Key.Parts)

	// The differ's layout: the source's column types in stage order.
	kv, err := h.bus.JS.KeyValue(context.Background(), bus.StateBucket)
	require.NoError(t, err)
	e, err := kv.Get(context.Background(), bus.StageColumnsKey("inv"))
	require.NoError(t, err)
	var layout onewayv1.Batch
	require.NoError(t, proto.Unmarshal(e.Value(), &layout))
	require.Equal(t, []string{"id", "customer", "updated_at"}, event.ColumnNames(&layout))
	require.True(t, layout.GetColumns()[0].GetKey())
	require.Equal(t, "public.invoices", layout.GetTable())
}

// A stager restarted on a consumer that redelivers everything changes
// nothing in the stage and republishes only duplicates.
func TestRedeliveryIsANoOp(t *testing.T) {
	h := start(t)
	h.publish(bus.SourceSubject("inv"), batch("source", []string{"id", "customer", "updated_at"},
		[]*string{s("1"), s("a"), nil}, []*string{s("2"), s("b"), nil}))
	h.publish(bus.TargetSubject("inv", "pg"), batch("target.pg", []string{"id", "customer", "updated_at"}, []*string{s("1"), s("a"), nil}))
	h.waitStaged(2)
	before := h.join("pg", "1", "2")
	h.stop()

	ctx := context.Background()
	require.NoError(t, h.bus.JS.DeleteConsumer(ctx, bus.StreamName("inv"), bus.StagerConsumer("inv")))
	h.run()
	// Wait until the new consumer has acked both messages.
	require.Eventually(t, func() bool {
		c, err := h.bus.JS.Consumer(ctx, bus.StreamName("inv"), bus.StagerConsumer("inv"))
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.AckFloor.Stream >= 2 && info.NumAckPending == 0 && info.NumPending == 0
	}, 20*time.Second, 20*time.Millisecond)
	require.Len(t, h.staged(), 2, "republished keys are duplicates")
	after := h.join("pg", "1", "2")
	for i := range before {
		require.Equal(t, before[i].Source.Version, after[i].Source.Version)
		require.Equal(t, before[i].Source.StagedAt, after[i].Source.StagedAt, "not written again")
	}
}

// A batch the stage cannot take (an owned column missing) is dead-lettered
// on the stager's own DLQ subject, and the stager goes on.
func TestBatchWithoutAnOwnedColumnIsDeadLettered(t *testing.T) {
	h := start(t)
	h.publish(bus.TargetSubject("inv", "pg"), batch("target.pg", []string{"id", "customer"}, []*string{s("1"), s("a")}))
	h.publish(bus.TargetSubject("inv", "other"), batch("target.other", []string{"id", "customer", "updated_at"}, []*string{s("1"), s("a"), nil}))
	h.publish(bus.SourceSubject("inv"), batch("source", []string{"id", "customer", "updated_at"}, []*string{s("5"), s("e"), nil}))
	h.waitStaged(1)
	ctx := context.Background()
	st, err := h.bus.JS.Stream(ctx, bus.StreamName("inv"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := st.GetLastMsgForSubject(ctx, bus.StagerDLQSubject("inv"))
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	m, err := st.GetLastMsgForSubject(ctx, bus.StagerDLQSubject("inv"))
	require.NoError(t, err)
	require.True(t, strings.Contains(m.Header.Get(bus.HeaderError), `no column "updated_at"`), m.Header.Get(bus.HeaderError))
	require.Equal(t, bus.TargetSubject("inv", "pg"), m.Header.Get(bus.HeaderSubject))
	require.Len(t, h.join("pg", "5"), 1)
}

// A writer's report of a push is noted in the push log even when a
// read-back published after the push was staged first (the guard keeps
// the read-back), and the key is handed to the differ, which may have set
// it aside while the push was in flight, though the report is quiet.
func TestAppliedReportConfirmsPushUnderANewerReadback(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	cols := []string{"id", "customer", "updated_at"}
	srcSeq := h.publish(bus.SourceSubject("inv"), batch("source", cols, []*string{s("2"), s("bob"), nil}, []*string{s("4"), s("dan"), nil}))
	h.waitStaged(1)
	// The differ pushed key 2 at position pushedAt; a read-back published
	// after it is staged before the writer's report.
	pushedAt := event.Version(srcSeq, 7)
	_, err := h.store.RecordPushes(ctx, "pg", []stage.Push{{Key: "2", Version: event.Version(srcSeq, 0), Position: pushedAt}})
	require.NoError(t, err)
	rbSeq := h.publish(bus.TargetSubject("inv", "pg"), batch("target.pg", cols, []*string{s("2"), s("BOB"), nil}))
	h.waitStaged(2)

	report := batch("applied.pg", cols, []*string{s("2"), s("bob"), nil}, []*string{s("4"), s("dan"), nil})
	report.Changes[0].Version = uint64(pushedAt)
	report.Changes[1].Version = uint64(event.Version(srcSeq, 8)) // a first insert: no push logged
	data, err := event.Encode(report)
	require.NoError(t, err)
	msg := nats.NewMsg(bus.AppliedSubject("inv", "pg"))
	msg.Data = data
	msg.Header.Set(bus.HeaderAsPushed, "true") // quiet
	_, err = h.bus.JS.PublishMsg(ctx, msg)
	require.NoError(t, err)

	got := h.waitStaged(3)
	require.Len(t, got, 3)
	require.Equal(t, "target.pg", got[2].GetSide())
	require.Equal(t, []string{"2"}, got[2].GetKeys(), "only the key whose push the report confirmed under a newer record")

	pairs := h.join("pg", "2", "4")
	require.Equal(t, event.Version(rbSeq, 0), pairs[0].Target.Version, "the guard kept the read-back")
	require.Equal(t, event.Version(srcSeq, 8), pairs[1].Target.Version)
	ps, err := h.store.Pushes(ctx, "pg", []string{"2", "4"})
	require.NoError(t, err)
	require.Len(t, ps, 1, "no entry created for key 4")
	require.Equal(t, "2", ps[0].Key)
	require.Equal(t, pushedAt, ps[0].Reported, "the report marks the push log")
	require.Equal(t, pushedAt, ps[0].Position)
}
