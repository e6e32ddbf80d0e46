package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
stage:
  scan_interval: 1h
source:
  kind: postgres
  url: postgres://x@h/db
  table: public.invoices
  key: [id]
  columns: [id, amount, updated_at]
  capture:
    column: updated_at
targets:
%s`

var columns = []*onewayv1.Column{
	{Name: "id", Type: "bigint", Key: true}, {Name: "amount", Type: "numeric(12,2)"}, {Name: "updated_at", Type: "text"},
}

type harness struct {
	t      *testing.T
	cfg    *config.Pipeline
	bus    *natsbus.Bus
	store  stage.Store
	cancel func()
	done   chan error
	scans  atomic.Int64
	seq    int64
	d      *Differ // the running differ
	// tune, when set, adjusts each differ before it runs.
	tune func(*Differ)
}

// start runs a differ over a fresh stage for targets (YAML list entries).
func start(t *testing.T, targets string) *harness {
	t.Helper()
	_, url := bustest.StartJetStream(t)
	cfg, err := config.Parse("p.yaml", []byte(fmt.Sprintf(pipelineYAML, url, targets)), nil)
	require.NoError(t, err)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := natsbus.Connect(ctx, url, "test", log)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	store, err := sqlitestage.Open(ctx, sqlitestage.Config{Dir: t.TempDir(), Pipeline: "inv"})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	_, err = b.EnsureStream(ctx, natsbus.PipelineStream(cfg))
	require.NoError(t, err)
	kv, err := b.StateKV(ctx, 1)
	require.NoError(t, err)
	layout, err := proto.Marshal(&onewayv1.Batch{SchemaVersion: 1, Pipeline: "inv", Origin: "source", Table: "public.invoices", Columns: columns})
	require.NoError(t, err)
	_, err = kv.Put(ctx, bus.StageColumnsKey("inv"), layout)
	require.NoError(t, err)
	h := &harness{t: t, cfg: cfg, bus: b, store: store, seq: 1}
	return h
}

func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(h.cfg, h.bus, h.store, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.NoError(h.t, err)
	d.OnScanned = func() { h.scans.Add(1) }
	h.d = d
	if h.tune != nil {
		h.tune(d)
	}
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- d.Run(ctx) }()
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

// rec builds a live record (amount given) or, with amount "-", a tombstone,
// at the next version.
func (h *harness) rec(id int, amount string) stage.Record {
	h.seq++
	k := strconv.Itoa(id)
	r := stage.Record{Key: stage.Key{Text: k, Parts: []string{k}}, Version: event.Version(uint64(h.seq), 0)}
	if amount == "-" {
		r.Deleted = true
		return r
	}
	r.Row = event.PackRow([][]byte{[]byte(k), []byte(amount), []byte("2024-01-01")})
	return r
}

func (h *harness) stage(side stage.Side, recs ...stage.Record) []string {
	h.t.Helper()
	_, err := h.store.Apply(context.Background(), side, recs)
	require.NoError(h.t, err)
	keys := make([]string, len(recs))
	for i, r := range recs {
		keys[i] = r.Key.Text
	}
	return keys
}

// lastPushPosition is the stream position of the last change pushed to
// target: the version its writer reports it applied at.
func (h *harness) lastPushPosition(target string) int64 {
	h.t.Helper()
	ctx := context.Background()
	st, err := h.bus.JS.Stream(ctx, bus.StreamName("inv"))
	require.NoError(h.t, err)
	m, err := st.GetLastMsgForSubject(ctx, bus.PushSubject("inv", target))
	require.NoError(h.t, err)
	b, err := event.Decode(m.Data)
	require.NoError(h.t, err)
	return event.Version(m.Sequence, len(b.GetChanges())-1)
}

// at stages r on side at version v.
func (h *harness) at(side stage.Side, r stage.Record, v int64) []string {
	h.t.Helper()
	r.Version = v
	return h.stage(side, r)
}

// report stages, as the stager does, what target's writer reports for the
// last push (a single-key batch): key id with amount ("-": deleted), at the
// push's position. It returns the key, and whether the report confirmed
// the key's last logged push.
func (h *harness) report(target string, id int, amount string) ([]string, bool) {
	h.t.Helper()
	r := h.rec(id, amount)
	r.Version = h.lastPushPosition(target)
	res, err := h.store.ApplyReports(context.Background(), target, []stage.Record{r})
	require.NoError(h.t, err)
	return []string{r.Key.Text}, len(res.Confirmed) == 1 && res.Confirmed[0].Text == r.Key.Text
}

// pushLog is the push log's entry of key on target.
func (h *harness) pushLog(target, key string) stage.PushState {
	h.t.Helper()
	ps, err := h.store.Pushes(context.Background(), target, []string{key})
	require.NoError(h.t, err)
	require.Len(h.t, ps, 1)
	return ps[0]
}

func (h *harness) staged(side stage.Side, keys []string, fullScan bool) {
	h.t.Helper()
	data, err := proto.Marshal(&onewayv1.Staged{SchemaVersion: 1, Pipeline: "inv", Side: string(side), Keys: keys, FullScan: fullScan})
	require.NoError(h.t, err)
	_, err = h.bus.JS.Publish(context.Background(), bus.StagedSubject("inv"), data)
	require.NoError(h.t, err)
}

// push is one decoded change on a push subject.
type push struct {
	op      onewayv1.Op
	key     string
	amount  string
	pattern onewayv1.CapturePattern
}

func (h *harness) pushes(target string) []push {
	h.t.Helper()
	ctx := context.Background()
	c, err := h.bus.JS.OrderedConsumer(ctx, bus.StreamName("inv"), jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.PushSubject("inv", target)}})
	require.NoError(h.t, err)
	var out []push
	for {
		msgs, err := c.FetchNoWait(100)
		require.NoError(h.t, err)
		n := 0
		for m := range msgs.Messages() {
			n++
			b, err := event.Decode(m.Data())
			require.NoError(h.t, err)
			require.True(h.t, proto.Equal(&onewayv1.Batch{Columns: columns}, &onewayv1.Batch{Columns: b.GetColumns()}), "pushes carry the source's column types")
			for _, c := range b.GetChanges() {
				vals, err := event.Row(c.GetRow(), nil)
				require.NoError(h.t, err)
				p := push{op: c.GetOp(), key: string(vals[0]), pattern: b.GetPattern()}
				if vals[1] != nil {
					p.amount = string(vals[1])
				}
				out = append(out, p)
			}
		}
		if n == 0 {
			return out
		}
	}
}

func (h *harness) waitPushes(target string, n int) []push {
	h.t.Helper()
	var got []push
	require.Eventually(h.t, func() bool { got = h.pushes(target); return len(got) >= n }, 20*time.Second, 20*time.Millisecond,
		"want %d pushes to %s", n, target)
	return got
}

func (h *harness) waitScans(n int64) {
	h.t.Helper()
	require.Eventually(h.t, func() bool { return h.scans.Load() >= n }, 20*time.Second, 10*time.Millisecond)
}

// settle waits for the differ's consumer to have nothing in flight.
func (h *harness) settle() {
	h.t.Helper()
	ctx := context.Background()
	require.Eventually(h.t, func() bool {
		c, err := h.bus.JS.Consumer(ctx, bus.StreamName("inv"), bus.DifferConsumer("inv"))
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, 20*time.Second, 10*time.Millisecond)
}

const pgTarget = `  - name: %s
    kind: postgres
    url: postgres://x@h/t
%s`

func target(name, extra string) string { return fmt.Sprintf(pgTarget, name, extra) }

// Each policy acts per the decision table, end to end through the stage
// and the push subjects of three targets with different policies.
func TestPushesFollowPolicies(t *testing.T) {
	h := start(t,
		target("hard", "    orphans: delete\n    breaker: {allow: true}\n")+
			target("soft", "    delete: soft\n    soft_delete_column: deleted_at\n    orphans: report\n    recreate_deleted: true\n    breaker: {allow: true}\n")+
			target("none", "    delete: none\n    breaker: {allow: true}\n"))
	// Source: 1 new, 2 equal (amount written differently), 3 differs,
	// 4 deleted at the source, 5 deleted by hand in the targets.
	h.stage(stage.SourceSide, h.rec(1, "1.00"), h.rec(2, "2.50"), h.rec(3, "3.00"), h.rec(4, "-"), h.rec(5, "5.00"))
	for _, name := range []string{"hard", "soft", "none"} {
		h.stage(stage.TargetSide(name), h.rec(2, "2.5"), h.rec(3, "3.01"), h.rec(4, "4.00"), h.rec(5, "-"), h.rec(9, "9.00"))
	}
	h.run()
	h.waitScans(1)
	h.settle()

	want := map[string][]push{
		"hard": {
			{onewayv1.Op_OP_UPSERT, "1", "1.00", onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT},
			{onewayv1.Op_OP_UPSERT, "3", "3.00", 0},
			{onewayv1.Op_OP_DELETE, "4", "", 0},
			{onewayv1.Op_OP_DELETE, "9", "", 0}, // orphan deleted
		},
		"soft": {
			{onewayv1.Op_OP_UPSERT, "1", "1.00", onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT},
			{onewayv1.Op_OP_UPSERT, "3", "3.00", 0},
			{onewayv1.Op_OP_DELETE, "4", "", 0},
			{onewayv1.Op_OP_UPSERT, "5", "5.00", 0}, // recreated
		},
		"none": {
			{onewayv1.Op_OP_UPSERT, "1", "1.00", onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT},
			{onewayv1.Op_OP_UPSERT, "3", "3.00", 0},
		},
	}
	for name, w := range want {
		got := h.pushes(name)
		slices.SortFunc(got, func(a, b push) int { return strings.Compare(a.key, b.key) })
		require.Equal(t, w, got, "target %s", name)
	}

	// Once the targets report what was applied, nothing more is pushed,
	// however often the keys are looked at.
	for _, name := range []string{"hard", "soft", "none"} {
		h.stage(stage.TargetSide(name), h.rec(1, "1.00"), h.rec(3, "3.00"))
	}
	h.stage(stage.TargetSide("hard"), h.rec(4, "-"), h.rec(9, "-"))
	h.stage(stage.TargetSide("soft"), h.rec(4, "-"), h.rec(5, "5.00"))
	h.staged(stage.SourceSide, []string{"1", "2", "3", "4", "5", "9"}, false)
	h.staged(stage.SourceSide, nil, true)
	h.waitScans(2)
	h.settle()
	require.Len(t, h.pushes("hard"), 4)
	require.Len(t, h.pushes("soft"), 4)
	require.Len(t, h.pushes("none"), 2)
}

// A target that never converges is pushed the same source version
// max_pushes_per_version times, then the key is dead-lettered once and
// left alone; a new source version is pushed again.
func TestPushCapStopsALoop(t *testing.T) {
	h := start(t, target("pg", "    max_pushes_per_version: 2\n"))
	h.stage(stage.SourceSide, h.rec(1, "1.25"))
	h.run()
	h.waitPushes("pg", 1)
	for i := 0; i < 5; i++ {
		// The target rounds the amount: it never converges. The writer
		// reports the rounded row at the last push's position.
		keys, _ := h.report("pg", 1, "1.30")
		h.staged(stage.TargetSide("pg"), keys, false)
		h.settle()
	}
	// The first push, an insert of a key the target never had, is not
	// counted; then two counted pushes.
	require.Len(t, h.pushes("pg"), 3)

	ctx := context.Background()
	st, err := h.bus.JS.Stream(ctx, bus.StreamName("inv"))
	require.NoError(t, err)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.DLQSubject("inv", "pg")))
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Subjects[bus.DLQSubject("inv", "pg")], "the stuck key is reported once")
	m, err := st.GetLastMsgForSubject(ctx, bus.DLQSubject("inv", "pg"))
	require.NoError(t, err)
	require.Equal(t, "1", m.Header.Get(bus.HeaderKey))
	require.Equal(t, "pg", m.Header.Get(bus.HeaderTarget))
	require.Contains(t, m.Header.Get(bus.HeaderError), "pushed 2 times and target pg still differs in amount")

	// The source changes: a new version, pushed again.
	h.staged(stage.SourceSide, h.stage(stage.SourceSide, h.rec(1, "2.00")), false)
	got := h.waitPushes("pg", 4)
	require.Equal(t, "2.00", got[3].amount)
}

// Deletes beyond the breaker's share are held: nothing is deleted, the
// hold says how many; after approval a scan pushes them and releases the
// hold. Inserts go on meanwhile.
func TestBreakerHoldsMassDeletesUntilApproved(t *testing.T) {
	h := start(t, target("pg", ""))
	var src, tgt []stage.Record
	for i := 1; i <= 20; i++ {
		src = append(src, h.rec(i, "1.00"))
		tgt = append(tgt, h.rec(i, "1.00"))
	}
	h.stage(stage.SourceSide, src...)
	h.stage(stage.TargetSide("pg"), tgt...)
	h.run()
	h.waitScans(1)

	// One delete of 20 (limit: 10% = 2) goes through.
	h.staged(stage.SourceSide, h.stage(stage.SourceSide, h.rec(1, "-")), false)
	require.Equal(t, onewayv1.Op_OP_DELETE, h.waitPushes("pg", 1)[0].op)
	h.stage(stage.TargetSide("pg"), h.rec(1, "-")) // the writer's report

	// Ten more (half the target) are held, with a count of what is pending.
	var dels []stage.Record
	for i := 2; i <= 11; i++ {
		dels = append(dels, h.rec(i, "-"))
	}
	h.staged(stage.SourceSide, h.stage(stage.SourceSide, dels...), false)
	h.staged(stage.SourceSide, h.stage(stage.SourceSide, h.rec(30, "3.00")), false)
	ctx := context.Background()
	var hold stage.Hold
	require.Eventually(t, func() bool {
		holds, err := h.store.Holds(ctx)
		require.NoError(t, err)
		if len(holds) == 1 && holds[0].Deletes == 10 {
			hold = holds[0]
			return true
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, stage.HoldHeld, hold.State)
	require.Equal(t, int64(20), hold.Total)
	got := h.waitPushes("pg", 2)
	h.settle()
	require.Equal(t, []push{{onewayv1.Op_OP_DELETE, "1", "", 0}, {onewayv1.Op_OP_UPSERT, "30", "3.00", onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT}}, h.pushes("pg"),
		"the insert goes on; the deletes wait (%v)", got)

	_, err := h.store.Approve(ctx, "pg", "tester")
	require.NoError(t, err)
	got = h.waitPushes("pg", 12)
	var deleted []string
	for _, p := range got[2:] {
		require.Equal(t, onewayv1.Op_OP_DELETE, p.op)
		deleted = append(deleted, p.key)
	}
	slices.Sort(deleted)
	require.Equal(t, []string{"10", "11", "2", "3", "4", "5", "6", "7", "8", "9"}, deleted)
	require.Eventually(t, func() bool {
		holds, err := h.store.Holds(ctx)
		require.NoError(t, err)
		return len(holds) == 0
	}, 20*time.Second, 20*time.Millisecond, "the hold is released once the approved deletes are pushed")
}

// A staged message diffed again from the same state (a redelivery after a
// crash) publishes only duplicates.
func TestSameStateSamePushID(t *testing.T) {
	h := start(t, target("pg", ""))
	keys := h.stage(stage.SourceSide, h.rec(1, "1.00"), h.rec(2, "2.00"))
	h.run()
	h.waitScans(1)
	h.settle()
	require.Len(t, h.pushes("pg"), 2)
	h.stop()
	// A second differ over the same state (a new process after a crash):
	// its scan and the redelivered keys decide the same pushes again.
	ctx := context.Background()
	_, err := h.store.ClearPushes(ctx, "pg", nil)
	require.NoError(t, err)
	h.run()
	h.staged(stage.SourceSide, keys, false)
	h.waitScans(2)
	h.settle()
	require.Len(t, h.pushes("pg"), 2, "same decisions from the same state are duplicates")
}

// A push that the target side has not confirmed yet is neither pushed nor
// counted again, whatever looks at the key meanwhile: a target row staged
// before the push was applied, a restart's scan, a read-back published
// after the push. The writer's report settles it; when a read-back staged
// above the report read the row before the push was applied, the key is
// pushed once more (counted), and the read-back's next cycle settles it.
func TestInFlightPushIsNotCountedAgain(t *testing.T) {
	h := start(t, target("pg", "    writer: {ack_wait: 1h}\n"))
	h.stage(stage.SourceSide, h.rec(1, "1.00"))
	h.at(stage.TargetSide("pg"), h.rec(1, "0.50"), 1)
	h.run()
	h.waitScans(1)
	h.settle()
	got := h.pushes("pg")
	require.Len(t, got, 1)
	require.Equal(t, "1.00", got[0].amount)
	pos := h.lastPushPosition("pg")
	require.Equal(t, stage.PushState{Key: "1", Version: h.pushLog("pg", "1").Version, Count: 1, Position: pos},
		func() stage.PushState {
			p := h.pushLog("pg", "1")
			p.FirstAt, p.LastAt = time.Time{}, time.Time{}
			return p
		}())

	steps := []struct {
		name    string
		version int64
		amount  string
		restart bool
	}{
		{"a target row staged before the push was applied", pos - 1, "0.50", false},
		{"a restart's scan", 0, "", true},
		{"a read-back published after the push, before the writer's report", pos + 1, "0.50", false},
	}
	for _, st := range steps {
		if st.restart {
			h.stop()
			h.run()
			h.waitScans(2)
		} else {
			h.staged(stage.TargetSide("pg"), h.at(stage.TargetSide("pg"), h.rec(1, st.amount), st.version), false)
		}
		h.settle()
		require.Len(t, h.pushes("pg"), 1, st.name)
		require.Equal(t, 1, h.pushLog("pg", "1").Count, st.name)
	}
	// The writer's report (as pushed) is staged under that read-back: the
	// push is confirmed, and the key is decided on the read-back, which
	// read the row before the push was applied: pushed once more.
	keys, confirmed := h.report("pg", 1, "1.00")
	require.True(t, confirmed)
	h.staged(stage.TargetSide("pg"), keys, false)
	got = h.waitPushes("pg", 2)
	require.Equal(t, "1.00", got[1].amount)
	h.settle()
	require.Equal(t, 2, h.pushLog("pg", "1").Count)
	// The read-back's next cycle reads the pushed row: converged.
	h.staged(stage.TargetSide("pg"), h.at(stage.TargetSide("pg"), h.rec(1, "1.00"), h.lastPushPosition("pg")+1), false)
	h.staged(stage.SourceSide, nil, true)
	h.waitScans(3)
	h.settle()
	require.Len(t, h.pushes("pg"), 2)
	ps, err := h.store.Pushes(context.Background(), "pg", []string{"1"})
	require.NoError(t, err)
	require.Empty(t, ps, "the scan forgets the count of a key that converged")
}

// The writer's report of a push is staged under a read-back published
// after the push (the version guard keeps the read-back): the push log
// says the push was reported, so the differ decides the key on the
// read-back at once, not after the in-flight timeout. A target that trims
// the value is pushed again, counted, and ends in the cap.
func TestReportUnderANewerReadbackConfirmsPush(t *testing.T) {
	h := start(t, target("pg", "    max_pushes_per_version: 2\n    writer: {ack_wait: 1h}\n"))
	require.Equal(t, 6*time.Hour, InFlightTimeout(h.cfg.Targets[0]), "far beyond this test")
	h.stage(stage.SourceSide, h.rec(1, "1.25"))
	h.at(stage.TargetSide("pg"), h.rec(1, "0.50"), 1)
	h.run()
	h.waitScans(1)
	h.settle()
	require.Len(t, h.pushes("pg"), 1)

	for n := 1; n <= 2; n++ {
		pos := h.lastPushPosition("pg")
		// The target rounds the amount. A read-back published after the
		// push shows it first: in flight, not pushed again.
		h.staged(stage.TargetSide("pg"), h.at(stage.TargetSide("pg"), h.rec(1, "1.30"), pos+1), false)
		h.settle()
		require.Len(t, h.pushes("pg"), n, "push %d in flight", n)
		// Then the writer's report, below the read-back.
		keys, confirmed := h.report("pg", 1, "1.30")
		require.True(t, confirmed)
		pairs, err := h.store.Join(context.Background(), "pg", []string{"1"})
		require.NoError(t, err)
		require.Equal(t, pos+1, pairs[0].Target.Version, "the guard kept the read-back")
		require.Equal(t, pos, h.pushLog("pg", "1").Reported)
		h.staged(stage.TargetSide("pg"), keys, false)
		h.settle()
		if n < 2 {
			got := h.waitPushes("pg", n+1)
			require.Equal(t, "1.25", got[n].amount, "pushed again at once")
			require.Equal(t, n+1, h.pushLog("pg", "1").Count)
		}
	}
	// The second counted push was confirmed too: over the cap, reported.
	require.Len(t, h.pushes("pg"), 2)
	ctx := context.Background()
	st, err := h.bus.JS.Stream(ctx, bus.StreamName("inv"))
	require.NoError(t, err)
	var m *jetstream.RawStreamMsg
	require.Eventually(t, func() bool {
		m, err = st.GetLastMsgForSubject(ctx, bus.DLQSubject("inv", "pg"))
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, "1", m.Header.Get(bus.HeaderKey))
	require.Contains(t, m.Header.Get(bus.HeaderError), "pushed 2 times and target pg still differs in amount")
}

// A key set aside while its push is in flight is looked at again without
// any new input: a writer's report that left the target as pushed (quiet:
// the stager does not hand it on) settles it, and a push never confirmed
// is pushed again once it timed out. Meanwhile InFlight counts the key.
func TestKeysInFlightAreLookedAtAgain(t *testing.T) {
	h := start(t, target("slow", "    writer: {ack_wait: 1h}\n")+target("fast", "    writer: {ack_wait: 1s, max_attempts: 1}\n"))
	h.stage(stage.SourceSide, h.rec(1, "1.00"))
	h.at(stage.TargetSide("slow"), h.rec(1, "0.50"), 1) // staged before any push
	h.at(stage.TargetSide("fast"), h.rec(1, "0.50"), 1)
	h.run()
	h.waitScans(1)
	h.settle()
	require.Len(t, h.pushes("slow"), 1)
	require.Len(t, h.pushes("fast"), 1)
	require.Zero(t, h.d.InFlight(), "nothing looked at the key since")
	// A restart's scan looks at the key while both pushes are in flight.
	h.stop()
	h.run()
	h.waitScans(2)
	h.settle()
	require.Equal(t, 2, h.d.InFlight())

	// The slow target's writer reports the push applied as pushed: a
	// quiet report, no staged keys. The fast target's push is lost.
	r := h.rec(1, "1.00")
	r.Version = h.pushLog("slow", "1").Position
	_, err := h.store.ApplyReports(context.Background(), "slow", []stage.Record{r})
	require.NoError(t, err)
	got := h.waitPushes("fast", 2) // once its push timed out (2 s)
	require.Equal(t, "1.00", got[1].amount)
	require.Eventually(t, func() bool { return h.pushLog("fast", "1").Count == 2 }, 20*time.Second, 20*time.Millisecond,
		"the push sent again is counted")
	require.Eventually(t, func() bool { return h.d.InFlight() == 0 }, 20*time.Second, 20*time.Millisecond)
	require.Len(t, h.pushes("slow"), 1, "the slow target's key settled without another push")
	require.Equal(t, 1, h.pushLog("slow", "1").Count)
}

// Keys set aside beyond what the differ remembers are counted as one in
// InFlight and looked at by a scan of their target once their pushes timed
// out.
func TestKeysInFlightBeyondTheCapAreScanned(t *testing.T) {
	h := start(t, target("pg", "    max_pushes_per_version: 2\n    writer: {ack_wait: 1s, max_attempts: 1}\n"))
	h.tune = func(d *Differ) { d.targets[0].asideMax = 1 }
	h.stage(stage.SourceSide, h.rec(1, "1.00"), h.rec(2, "2.00"), h.rec(3, "3.00"))
	for id := 1; id <= 3; id++ {
		h.at(stage.TargetSide("pg"), h.rec(id, "0.50"), 1)
	}
	h.run()
	h.waitScans(1)
	h.settle()
	require.Len(t, h.pushes("pg"), 3)
	h.stop()
	h.run()
	h.waitScans(2)
	require.Equal(t, 2, h.d.InFlight(), "one key remembered, the others counted as one")

	// No writer reports: every push is lost. Once they time out, the
	// remembered key is looked at again and the others are scanned: each
	// is pushed again, and then reported stuck.
	require.Eventually(t, func() bool {
		for _, k := range []string{"1", "2", "3"} {
			if h.pushLog("pg", k).Count < 2 {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "every key pushed again without any new input")
	// The scan is counted when it ends, a moment after its pushes were.
	require.Eventually(t, func() bool { return h.scans.Load() >= 3 }, 20*time.Second, 20*time.Millisecond,
		"pushed again by a scan (scan_interval is 1h)")
	require.Eventually(t, func() bool { return h.d.InFlight() == 0 }, 20*time.Second, 20*time.Millisecond)
}

// inFlight: a push is in flight until the writer's report shows (at the
// push's position, or in the push log's Reported) or the timeout passes.
func TestInFlight(t *testing.T) {
	now := time.Now()
	const pos = 100 << 20
	rec := func(v int64) *stage.Record { return &stage.Record{Version: v} }
	tests := []struct {
		name   string
		st     stage.PushState
		target *stage.Record
		want   bool
	}{
		{"no position", stage.PushState{LastAt: now}, nil, false},
		{"no target record", stage.PushState{Position: pos, LastAt: now}, nil, true},
		{"a target record below", stage.PushState{Position: pos, LastAt: now}, rec(pos - 1), true},
		{"a read-back above", stage.PushState{Position: pos, LastAt: now}, rec(pos + 1), true},
		{"the report itself", stage.PushState{Position: pos, LastAt: now}, rec(pos), false},
		{"reported under a read-back above", stage.PushState{Position: pos, Reported: pos, LastAt: now}, rec(pos + 1), false},
		{"reported by a later push's report", stage.PushState{Position: pos, Reported: pos + 5, LastAt: now}, rec(pos + 6), false},
		{"an earlier push reported", stage.PushState{Position: pos, Reported: pos - 5, LastAt: now}, rec(pos + 1), true},
		{"timed out", stage.PushState{Position: pos, LastAt: now.Add(-time.Minute)}, rec(pos + 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, inFlight(tt.st, tt.target, now, time.Minute))
		})
	}
}

// A push that the target never confirms is pushed again once the in-flight
// timeout (the writer's ack_wait × (max_attempts + 1)) has passed, and
// counted, so that a lost push ends in the cap rather than being waited
// for forever.
func TestLostPushIsSentAgainAfterTimeout(t *testing.T) {
	h := start(t, target("pg", "    max_pushes_per_version: 2\n    writer: {ack_wait: 1s, max_attempts: 1}\n"))
	require.Equal(t, 2*time.Second, InFlightTimeout(h.cfg.Targets[0]))
	h.stage(stage.SourceSide, h.rec(1, "1.00"))
	h.at(stage.TargetSide("pg"), h.rec(1, "0.50"), 1)
	h.run()
	h.waitScans(1)
	require.Len(t, h.pushes("pg"), 1)
	first := h.lastPushPosition("pg")
	h.staged(stage.SourceSide, []string{"1"}, false)
	h.settle()
	require.Len(t, h.pushes("pg"), 1, "in flight: not pushed again at once")

	// Looked at again (as a scan would) until the timeout has passed.
	require.Eventually(t, func() bool {
		h.staged(stage.SourceSide, []string{"1"}, false)
		return len(h.pushes("pg")) >= 2
	}, 20*time.Second, 200*time.Millisecond)
	h.settle()
	require.Len(t, h.pushes("pg"), 2)
	p := h.pushLog("pg", "1")
	require.Equal(t, 2, p.Count)
	require.Greater(t, p.Position, first)
	require.Equal(t, h.lastPushPosition("pg"), p.Position)

	// Lost again: the third look after the timeout is over the cap, and the
	// key is reported once.
	require.Eventually(t, func() bool {
		h.staged(stage.SourceSide, []string{"1"}, false)
		return h.pushLog("pg", "1").Count == 3
	}, 20*time.Second, 200*time.Millisecond)
	h.settle()
	require.Len(t, h.pushes("pg"), 2)
	ctx := context.Background()
	st, err := h.bus.JS.Stream(ctx, bus.StreamName("inv"))
	require.NoError(t, err)
	m, err := st.GetLastMsgForSubject(ctx, bus.DLQSubject("inv", "pg"))
	require.NoError(t, err)
	require.Contains(t, m.Header.Get(bus.HeaderError), "pushed 2 times and target pg still differs in amount")
}

// A group of staged keys larger than one join chunk is joined chunk by
// chunk, several chunks ahead, and still pushed once per key and in key
// order: chunks are acted on in turn.
func TestManyKeysArePushedOnceInKeyOrder(t *testing.T) {
	h := start(t, target("pg", ""))
	h.run()
	h.waitScans(1) // of an empty stage
	const n = 3*chunk + 500
	recs := make([]stage.Record, n)
	for i := range recs {
		recs[i] = h.rec(i+1, "1.00")
	}
	keys := h.stage(stage.SourceSide, recs...)
	h.staged(stage.SourceSide, keys, false)
	h.waitPushes("pg", n)
	h.settle()
	got := h.pushes("pg")
	require.Len(t, got, n, "one push per key")
	pushed := make([]string, len(got))
	for i, p := range got {
		pushed[i] = p.key
	}
	want := slices.Clone(keys)
	slices.Sort(want)
	require.Equal(t, want, pushed, "pushed in key order")
}
