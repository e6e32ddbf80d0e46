// Package app is the differ of staged push. For the keys the stager hands
// it on oneway.<p>.staged (and, at start, on a schedule and on demand, for
// every key, in pages) it joins the source's and each target's staged
// records, decides what the target needs (internal/diff) and publishes it
// on oneway.<p>.push.<t>, which the target's writers apply.
//
// Versions of pushes. The writers consuming push.<t> fence each change by
// its position in the stream (seq<<20 | index), as they do the source. That
// orders pushes correctly because, per target, the differ decides and
// publishes one batch at a time (a lock per target serialises incremental
// work, scans and approvals), always from the stage's current state, which
// only moves forward: a later push carries a state at least as new as an
// earlier one. Run one differ per pipeline (its consumer allows one group
// in flight, so a second process mostly waits).
//
// No endless loops. A target may never converge (a trigger trims a string,
// a column rounds a number). Each push of a source version of a key is
// counted in the stage's push log; once a version was pushed
// max_pushes_per_version times without the target converging, the differ
// stops pushing it, reports it (a dead letter on oneway.<p>.dlq.<t> naming
// key, target, version and the columns that differ, and the metric
// oneway_differ_decisions_total{action="stuck"}) and moves on. A new source
// version starts the count again, and each scan clears the counts of the
// keys that converged. The first insert of a key the target side has
// never had is not counted (on an initial load that would cost a write per
// key): a key that never appears in the target is pushed at most
// max_pushes_per_version + 1 times.
//
// Pushes in flight. A push is counted only when it goes out, and the log
// keeps where it went out: its position in the stream, which is the
// version the writer fences it with and reports it applied at. Until the
// target side shows that report, the push is in flight, and the same
// source version is neither pushed nor counted again, however often the
// key is looked at (a restart's scan, a read-back's row): otherwise one
// slow push would be counted several times and a key that converges
// would be reported stuck. The report shows in either of two ways: a
// target record at exactly the push's position, or the push log's
// Reported at or above it, which the stager raises whenever it stages a
// writer's report (stage.Records.ApplyReports), also when the version
// guard keeps a newer record: a read-back published after the push and
// staged before the report replaces it in the stage. Once the push is
// confirmed, the key is decided on the target record the stage holds
// now, and the stager hands such a key on to the differ again. A target
// record above the position alone does not confirm the push: it is a
// read-back published after the push, but it may have read the row before
// the push was applied (a read-back cannot be ordered against the
// writer's transaction), and counting the difference it shows would count
// a push that took. One edge remains: a read-back staged above the report
// that read the row before the push was applied makes the differ push the
// key once more (counted) once the report is staged; the read-back's next
// cycle, which reads the pushed row, settles the key. A push not confirmed
// within InFlightTimeout (the writer's ack_wait times max_attempts+1) is
// taken as lost: the next look at the key pushes it again and counts it,
// so a lost push ends in the cap and a dead letter rather than waiting
// silently. The timeout is measured from the log's time of the push (the
// stage database's clock for pgstage). The differ remembers the keys it
// set aside while their push was in flight and looks at them again every
// second: a writer's report that left the target as pushed is not handed
// on by the stager, and a push never confirmed times out with nothing
// else to look at its key. InFlight counts them, so that `oneway up
// --exit-when-synced` does not take a quiet pipeline for a synced one
// while the differ still has a key to push or decide.
//
// Mass deletes. Deletes (source deletes and orphan deletes) count against
// the target's breaker: more than breaker.max_delete_share of the target's
// staged records within breaker.window, and the deletes are held (the
// stage's Hold) until `oneway approve`: then a scan pushes them and the hold
// is released. Inserts and updates go on meanwhile.
package app

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/differ/internal/diff"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

const (
	// fetchBatch staged messages are diffed together; the consumer allows
	// no more in flight, so one differ process works at a time.
	fetchBatch = 32
	ackWait    = time.Minute
	// chunk bounds the keys of one Join and one page of a scan.
	chunk = 1000
	// holdPoll is how often approvals are looked for.
	holdPoll = 2 * time.Second
	// sizeTTL is how long a target's record count is reused.
	sizeTTL = 10 * time.Second
	// reportSamples bounds the keys named in one log line.
	reportSamples = 10
	// scanAcks bounds the push acks a scan leaves pending.
	scanAcks = 64
	// colsTTL is how long the stage layout read from the state bucket is
	// reused.
	colsTTL = time.Second
	// asideCap bounds the keys per target remembered as set aside while
	// their push is in flight; asideRecheck is how often they are looked
	// at again.
	asideCap     = 10000
	asideRecheck = time.Second
)

// Differ diffs one pipeline's targets against its source.
type Differ struct {
	cfg     *config.Pipeline
	bus     *natsbus.Bus
	store   stage.Store
	log     *slog.Logger
	metrics *telemetry.Metrics
	layout  stage.Layout
	targets []*targetState
	kv      jetstream.KeyValue

	colsMu  sync.Mutex
	colsRev uint64
	colsAt  time.Time
	cols    *onewayv1.Batch

	scanMu  sync.Mutex
	pending map[string]bool // targets waiting for a scan
	wake    chan struct{}

	// OnReady, when set before Run, is called once the consumer is bound.
	OnReady func()
	// OnScanned, when set before Run, is called after each scan of every
	// target (the first one runs at start).
	OnScanned func()
}

type targetState struct {
	cfg config.Target
	pol diff.Policy
	mu  sync.Mutex // one decide-and-publish at a time per target

	sizeAt time.Time
	size   int64

	// tally, when set (by a scan, under mu), adds up what act decided and
	// pushed, for the scan's log line.
	tally map[string]int

	// aside holds, under mu, the keys last set aside because their push
	// was in flight: act forgets the keys it decides, recheckLoop looks at
	// the rest again. asideOver, when not zero, is the latest timeout of
	// the pushes of keys set aside beyond asideMax, which a scan of the
	// target that starts after it looks at (and then clears it). asideN
	// is len(aside), plus 1 while asideOver is set, readable without mu
	// (InFlight).
	aside     map[string]bool
	asideMax  int // asideCap; lower in tests
	asideOver time.Time
	asideN    atomic.Int64
}

// forget drops keys from the set-aside keys: they are being decided.
// The caller holds mu.
func (ts *targetState) forget(pairs []stage.Pair) {
	if len(ts.aside) == 0 {
		return
	}
	for _, p := range pairs {
		delete(ts.aside, p.Key.Text)
	}
	ts.countAside()
}

// setAside remembers key as set aside while its push, which times out at
// until, is in flight. The caller holds mu.
func (ts *targetState) setAside(key string, until time.Time) {
	switch {
	case len(ts.aside) < ts.asideMax:
		ts.aside[key] = true
	case until.After(ts.asideOver):
		ts.asideOver = until
	}
	ts.countAside()
}

func (ts *targetState) countAside() {
	n := int64(len(ts.aside))
	if !ts.asideOver.IsZero() {
		n++
	}
	ts.asideN.Store(n)
}

// New returns a differ for cfg (which must be in staged mode) on store.
// metrics may be nil.
func New(cfg *config.Pipeline, b *natsbus.Bus, store stage.Store, log *slog.Logger, metrics *telemetry.Metrics) (*Differ, error) {
	if !cfg.Staged() {
		return nil, fmt.Errorf("pipeline %s is not in staged mode", cfg.Pipeline)
	}
	d := &Differ{cfg: cfg, bus: b, store: store, metrics: metrics, layout: stage.LayoutOf(cfg),
		log: log.With("component", "differ"), pending: map[string]bool{}, wake: make(chan struct{}, 1)}
	for _, t := range cfg.Targets {
		d.targets = append(d.targets, &targetState{cfg: t, pol: PolicyOf(t), aside: map[string]bool{}, asideMax: asideCap})
	}
	return d, nil
}

// PolicyOf is the decision policy of a target's config.
func PolicyOf(t config.Target) diff.Policy {
	return diff.Policy{Delete: t.Delete, Orphans: t.Orphans, RecreateDeleted: t.RecreateDeleted}
}

// Name implements runner.Component.
func (d *Differ) Name() string { return "differ" }

// ConsumerSpec is the differ's durable consumer of the staged subject.
func ConsumerSpec(cfg *config.Pipeline) natsbus.ConsumerSpec {
	return natsbus.ConsumerSpec{
		Stream:        bus.StreamName(cfg.Pipeline),
		Durable:       bus.DifferConsumer(cfg.Pipeline),
		FilterSubject: bus.StagedSubject(cfg.Pipeline),
		AckWait:       ackWait,
		MaxAckPending: fetchBatch,
	}
}

// Run consumes staged keys, scans on schedule and watches approvals until
// ctx ends.
func (d *Differ) Run(ctx context.Context) error {
	kv, cons, err := d.bus.PipelineConsumer(ctx, d.cfg, ConsumerSpec(d.cfg))
	if err != nil {
		return err
	}
	d.kv = kv
	if d.OnReady != nil {
		d.OnReady()
	}
	d.log.Info("differ consuming", "consumer", bus.DifferConsumer(d.cfg.Pipeline), "scan_interval", d.cfg.Stage.ScanInterval.Duration)
	d.requestScan("")

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, run := range []func(context.Context) error{
		func(ctx context.Context) error {
			return d.bus.ConsumeBatches(ctx, cons, d.handle, natsbus.ConsumeOptions{
				Workers: 1, FetchBatch: fetchBatch, MaxAttempts: 10, AckWait: ackWait,
				DeadLetterSubject: bus.DifferDLQSubject(d.cfg.Pipeline),
				Headers:           map[string]string{bus.HeaderPipeline: d.cfg.Pipeline},
				Log:               d.log,
				Recreate: func(ctx context.Context) (jetstream.Consumer, error) {
					return d.bus.EnsureConsumer(ctx, ConsumerSpec(d.cfg))
				},
			})
		},
		d.scanLoop,
		d.holdLoop,
		d.recheckLoop,
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- run(ctx)
		}()
	}
	wg.Wait()
	close(errc)
	var errList []error
	for err := range errc {
		if err != nil && !errors.Is(err, context.Canceled) {
			errList = append(errList, err)
		}
	}
	return errors.Join(errList...)
}

// handle diffs the keys of a group of staged messages: source keys against
// every target, a target's keys against that target.
func (d *Differ) handle(ctx context.Context, msgs []jetstream.Msg) error {
	var acks []jetstream.PubAckFuture
	srcKeys := map[string]bool{}
	tgtKeys := map[string]map[string]bool{}
	for _, msg := range msgs {
		var st onewayv1.Staged
		if err := proto.Unmarshal(msg.Data(), &st); err != nil {
			return errs.Permanentf("decode staged keys: %w", err)
		}
		if st.GetSchemaVersion() != event.SchemaVersion || st.GetPipeline() != d.cfg.Pipeline {
			return errs.Permanentf("staged keys of pipeline %q, schema version %d: want pipeline %q, version %d",
				st.GetPipeline(), st.GetSchemaVersion(), d.cfg.Pipeline, event.SchemaVersion)
		}
		side := stage.Side(st.GetSide())
		if err := side.Validate(); err != nil {
			return err
		}
		name, isTarget := side.Target()
		if st.GetFullScan() {
			d.requestScan(name)
		}
		set := srcKeys
		if isTarget {
			if tgtKeys[name] == nil {
				tgtKeys[name] = map[string]bool{}
			}
			set = tgtKeys[name]
		}
		for _, k := range st.GetKeys() {
			set[k] = true
		}
	}
	for _, ts := range d.targets {
		keys := make([]string, 0, len(srcKeys)+len(tgtKeys[ts.cfg.Name]))
		for k := range srcKeys {
			keys = append(keys, k)
		}
		for k := range tgtKeys[ts.cfg.Name] {
			if !srcKeys[k] {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		if err := d.diffKeys(ctx, ts, keys, &acks); err != nil {
			return err
		}
	}
	// The pushes of every chunk are acked together: they were published
	// in order on one connection, so waiting once per group keeps that
	// order and costs one round trip, not one per chunk. A failure
	// redelivers the group, re-decided from the stage as it is then.
	if err := natsbus.WaitAcks(ctx, acks); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	return nil
}

// diffKeys joins keys (in key order, any number) of one target chunk by
// chunk and acts on them, appending the acks of its pushes to acks.
func (d *Differ) diffKeys(ctx context.Context, ts *targetState, keys []string, acks *[]jetstream.PubAckFuture) error {
	for len(keys) > 0 {
		n := min(len(keys), chunk)
		if err := d.diffChunk(ctx, ts, keys[:n], acks); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// diffChunk is diffKeys of at most chunk keys, under ts.mu.
func (d *Differ) diffChunk(ctx context.Context, ts *targetState, keys []string, acks *[]jetstream.PubAckFuture) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var pairs []stage.Pair
	err := d.retry(ctx, "join", func(ctx context.Context) error {
		var err error
		pairs, err = d.store.Join(ctx, ts.cfg.Name, keys)
		return err
	})
	if err != nil {
		return fmt.Errorf("join %d keys of target %s: %w", len(keys), ts.cfg.Name, err)
	}
	_, err = d.act(ctx, ts, pairs, deletesByBreaker, acks)
	return err
}

// deleteMode says what act does with delete decisions.
type deleteMode int

const (
	deletesByBreaker deleteMode = iota // pushed if the breaker allows them
	deletesApproved                    // pushed (allowed or approved): not counted
	deletesDeferred                    // not pushed: returned to the caller
)

// decision is one key's action.
type decision struct {
	pair   stage.Pair
	action diff.Action
	// push numbers a counted push among the pushes of its source version
	// (1 for the first; 0 for a push that is not counted).
	push int
}

// act decides each pair and publishes what the target needs. It returns
// the delete decisions it did not push when mode is deletesDeferred. The
// acks of its pushes are appended to acks, which the caller must wait for
// before acking what it acted on; with acks nil, act waits for them. The
// caller holds ts.mu.
func (d *Differ) act(ctx context.Context, ts *targetState, pairs []stage.Pair, mode deleteMode, acks *[]jetstream.PubAckFuture) ([]decision, error) {
	t := ts.cfg.Name
	cols := d.columns(ctx)
	var cmp *diff.Comparer
	if cols != nil {
		cmp = diff.NewComparer(cols.GetColumns())
	}
	equal := func(a, b *stage.Record) bool {
		if cmp == nil {
			return string(a.Hash) == string(b.Hash)
		}
		return string(a.Hash) == string(b.Hash) || cmp.Equal(a.Row, b.Row)
	}
	counts := map[string]int{}
	var pushes, deletes, deferred []decision
	var reported []string
	ts.forget(pairs)
	for _, p := range pairs {
		a := diff.Decide(p, ts.pol, equal)
		counts[a.String()]++
		switch {
		case a == diff.OrphanReport:
			reported = append(reported, p.Key.Text)
		case a.Deletes():
			deletes = append(deletes, decision{pair: p, action: a})
		case a.Pushes():
			pushes = append(pushes, decision{pair: p, action: a})
		}
	}
	if len(deletes) > 0 {
		switch mode {
		case deletesApproved:
			pushes = append(pushes, deletes...)
		case deletesDeferred:
			deferred = deletes
		default:
			ok, err := d.breakerAllows(ctx, ts, len(deletes))
			if err != nil {
				return nil, err
			}
			if ok {
				pushes = append(pushes, deletes...)
			} else {
				counts["held"] += len(deletes)
			}
		}
	}
	if len(reported) > 0 {
		d.log.Warn("orphans reported", "target", t, "count", len(reported), "sample_keys", sample(reported))
	}
	if len(pushes) > 0 {
		if cols == nil {
			// No source batch was staged yet, so no column types: the
			// next scan pushes these.
			d.log.Warn("no source layout staged yet; pushes wait for the next scan", "target", t, "keys", len(pushes))
			pushes = nil
		}
		var err error
		var logged []stage.Push
		if pushes, logged, err = d.capPushes(ctx, ts, pushes, cmp, cols, counts); err != nil {
			return nil, err
		}
		futures, sent, err := d.publish(ctx, ts, pushes, cols)
		if err != nil {
			return nil, err
		}
		if ts.tally != nil {
			ts.tally["pushed"] += len(pushes)
		}
		if len(logged) == 0 && acks != nil {
			// Nothing counted waits for its position: the caller waits
			// for the acks of the whole group at once.
			*acks = append(*acks, futures...)
		} else {
			positions, err := positionsOf(ctx, ts, futures, sent)
			if err != nil {
				return nil, err
			}
			if err := d.recordPushes(ctx, ts, logged, positions); err != nil {
				return nil, err
			}
		}
	}
	if m := d.metrics; m != nil {
		for a, n := range counts {
			m.DifferDecisions.WithLabelValues(d.cfg.Pipeline, t, a).Add(float64(n))
		}
	}
	if ts.tally != nil {
		for a, n := range counts {
			ts.tally[a] += n
		}
	}
	return deferred, nil
}

// capPushes decides which pushes go out, from what the push log holds of
// their keys: it drops (and counts as in_flight) those whose last push of
// the same source version is still in flight (see inFlight), and drops
// (and reports, the first time) those of a version pushed
// max_pushes_per_version times already. It returns the pushes to publish
// and the pushes to count once they are published (recordPushes): every
// kept push but first inserts of keys the target side never had, and a
// stuck push the first time it is reported (so that the log says it was
// given up on).
func (d *Differ) capPushes(ctx context.Context, ts *targetState, pushes []decision, cmp *diff.Comparer, cols *onewayv1.Batch, counts map[string]int) ([]decision, []stage.Push, error) {
	if len(pushes) == 0 {
		return nil, nil, nil
	}
	// First inserts of keys the target side never had are not counted.
	var counted []decision
	kept := make([]decision, 0, len(pushes))
	for _, p := range pushes {
		if p.action == diff.Insert && p.pair.Target == nil {
			kept = append(kept, p)
		} else {
			counted = append(counted, p)
		}
	}
	if len(counted) == 0 {
		return kept, nil, nil
	}
	keys := make([]string, len(counted))
	for i, p := range counted {
		keys[i] = p.pair.Key.Text
	}
	var states []stage.PushState
	err := d.retry(ctx, "read pushes", func(ctx context.Context) error {
		var err error
		states, err = d.store.Pushes(ctx, ts.cfg.Name, keys)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read the push log of target %s: %w", ts.cfg.Name, err)
	}
	byKey := make(map[string]stage.PushState, len(states))
	for _, st := range states {
		byKey[st.Key] = st
	}
	now, timeout := time.Now(), InFlightTimeout(ts.cfg)
	max := ts.cfg.MaxPushesPerVersion
	logged := make([]stage.Push, 0, len(counted))
	for _, p := range counted {
		v := sourceVersion(p.pair)
		n := 1
		if st, ok := byKey[p.pair.Key.Text]; ok && st.Version == v {
			if inFlight(st, p.pair.Target, now, timeout) {
				counts["in_flight"]++
				ts.setAside(p.pair.Key.Text, st.LastAt.Add(timeout))
				continue
			}
			n = st.Count + 1
		}
		switch {
		case n <= max:
			p.push = n
			kept = append(kept, p)
			logged = append(logged, stage.Push{Key: p.pair.Key.Text, Version: v})
		case n == max+1:
			counts["stuck"]++
			if err := d.reportStuck(ctx, ts, p, max, cmp, cols); err != nil {
				return nil, nil, err
			}
			logged = append(logged, stage.Push{Key: p.pair.Key.Text, Version: v})
		default:
			counts["stuck"]++
		}
	}
	return kept, logged, nil
}

// InFlightTimeout is how long a push of a key to t is taken to be in
// flight when the target side does not confirm it: as long as the
// target's writer may take to apply it or give up on it (every delivery
// waiting out its ack_wait), and one ack_wait more.
func InFlightTimeout(t config.Target) time.Duration {
	wait, attempts := t.Writer.AckWait.Duration, t.Writer.MaxAttempts
	if wait <= 0 {
		wait = 10 * time.Second
	}
	if attempts <= 0 {
		attempts = 5
	}
	return wait * time.Duration(attempts+1)
}

// inFlight reports whether the last push st of a key, of the version the
// differ is about to push again, is still in flight given the key's
// record on the target side: it was published (its position is known),
// less than timeout ago, and the target side does not show the writer's
// report of it. A target record below the push's position was staged
// before the push was applied; one above it is a read-back published
// after the push, which may have read the row before the push was applied
// (so it cannot tell whether the push took). Only the writer's own report
// confirms the push: a record at exactly the push's position, or the push
// log's Reported at or above it (the report was staged, and a newer
// read-back may have replaced it). When the target record then still
// differs from the source, the push is sent again and counted.
func inFlight(st stage.PushState, target *stage.Record, now time.Time, timeout time.Duration) bool {
	if st.Position <= 0 || st.Reported >= st.Position || now.Sub(st.LastAt) >= timeout {
		return false
	}
	return target == nil || target.Version != st.Position
}

// recordPushes counts logged in the push log, each with the position it
// was published at (0 for a push that was not published).
func (d *Differ) recordPushes(ctx context.Context, ts *targetState, logged []stage.Push, positions map[string]int64) error {
	if len(logged) == 0 {
		return nil
	}
	for i := range logged {
		logged[i].Position = positions[logged[i].Key]
	}
	err := d.retry(ctx, "record pushes", func(ctx context.Context) error {
		_, err := d.store.RecordPushes(ctx, ts.cfg.Name, logged)
		return err
	})
	if err != nil {
		return fmt.Errorf("record pushes to target %s: %w", ts.cfg.Name, err)
	}
	return nil
}

// sourceVersion is the source version a push carries (0 for an orphan).
func sourceVersion(p stage.Pair) int64 {
	if p.Source == nil {
		return 0
	}
	return p.Source.Version
}

// reportStuck dead-letters a key the differ stops pushing.
func (d *Differ) reportStuck(ctx context.Context, ts *targetState, p decision, pushed int, cmp *diff.Comparer, cols *onewayv1.Batch) error {
	t := ts.cfg.Name
	reason := fmt.Sprintf("source version %d of key %s was pushed %d times and target %s still differs", sourceVersion(p.pair), p.pair.Key.Text, pushed, t)
	if cmp != nil && p.pair.Source != nil && p.pair.Target != nil && !p.pair.Target.Deleted && !p.pair.Source.Deleted {
		var names []string
		for _, i := range cmp.Differs(p.pair.Source.Row, p.pair.Target.Row) {
			names = append(names, cols.GetColumns()[i].GetName())
		}
		reason += " in " + strings.Join(names, ", ") + " (does it trim or round values?)"
	} else if p.pair.Target == nil || p.pair.Target.Deleted {
		reason += " (the record never appears in the target)"
	} else {
		reason += " (the record stays in the target)"
	}
	reason += "; not pushed again until the source changes"
	b := d.batch(cols, []decision{p}, onewayv1.CapturePattern_CAPTURE_PATTERN_UNSPECIFIED)
	data, err := event.Encode(b)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: bus.DLQSubject(d.cfg.Pipeline, t), Data: data, Header: nats.Header{}}
	m.Header.Set(bus.HeaderError, event.SanitizeHeader(reason))
	m.Header.Set(bus.HeaderPipeline, d.cfg.Pipeline)
	m.Header.Set(bus.HeaderTarget, t)
	m.Header.Set(bus.HeaderKey, event.SanitizeHeader(p.pair.Key.Text))
	m.Header.Set(bus.HeaderAttempts, strconv.Itoa(pushed))
	m.Header.Set(bus.HeaderSubject, bus.StagedSubject(d.cfg.Pipeline))
	id := "stuck:" + t + ":" + p.pair.Key.Text + ":" + strconv.FormatInt(sourceVersion(p.pair), 10)
	if _, err := d.bus.PublishMsg(ctx, m, id); err != nil {
		return fmt.Errorf("report stuck key %s of target %s: %w", p.pair.Key.Text, t, err)
	}
	d.log.Error("key does not converge; stopped pushing it", "target", t, "key", p.pair.Key.Text, "version", sourceVersion(p.pair), "pushes", pushed, "reason", reason)
	if d.metrics != nil {
		d.metrics.DeadLetters.WithLabelValues(d.cfg.Pipeline, t).Inc()
	}
	return nil
}

// publish sends the pushes on the target's push subject: inserts of keys
// the target side has never seen in snapshot-pattern batches (the writer's
// bulk path may take them), the rest in ordinary batches, each at most
// batch_size changes and three quarters of the server's max payload. It
// returns the publishes' acks, for the caller to wait for, and the
// decisions each one carries (see positionsOf).
func (d *Differ) publish(ctx context.Context, ts *targetState, pushes []decision, cols *onewayv1.Batch) ([]jetstream.PubAckFuture, [][]decision, error) {
	if len(pushes) == 0 {
		return nil, nil, nil
	}
	var fresh, rest []decision
	for _, p := range pushes {
		if p.action == diff.Insert && p.pair.Target == nil {
			fresh = append(fresh, p)
		} else {
			rest = append(rest, p)
		}
	}
	subject := bus.PushSubject(d.cfg.Pipeline, ts.cfg.Name)
	maxBytes := int(d.bus.NC.MaxPayload()) * 3 / 4
	maxChanges := d.cfg.Source.Capture.BatchSize
	var futures []jetstream.PubAckFuture
	var sent [][]decision // the decisions of each future's batch
	for _, group := range []struct {
		ds      []decision
		pattern onewayv1.CapturePattern
	}{{fresh, onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT}, {rest, onewayv1.CapturePattern_CAPTURE_PATTERN_UNSPECIFIED}} {
		ds := group.ds
		for len(ds) > 0 {
			n, size := 0, 256
			for n < len(ds) && n < maxChanges {
				sz := 32 + len(ds[n].pair.Key.Text)
				if ds[n].pair.Source != nil {
					sz += len(ds[n].pair.Source.Row)
				}
				if n > 0 && size+sz > maxBytes {
					break
				}
				size += sz
				n++
			}
			data, err := event.Encode(d.batch(cols, ds[:n], group.pattern))
			if err != nil {
				return nil, nil, err
			}
			f, err := d.bus.PublishAsync(ctx, subject, data, pushID(ts.cfg.Name, ds[:n]))
			if err != nil {
				return nil, nil, err
			}
			futures = append(futures, f)
			sent = append(sent, ds[:n])
			ds = ds[n:]
		}
	}
	return futures, sent, nil
}

// positionsOf waits for the acks of a publish's futures and returns the
// stream position of each pushed key (event.Version of its batch's
// sequence and its index in the batch: the version the writer applies it
// at; a duplicate batch has its first publish's sequence).
func positionsOf(ctx context.Context, ts *targetState, futures []jetstream.PubAckFuture, sent [][]decision) (map[string]int64, error) {
	acks, err := waitPubAcks(ctx, futures)
	if err != nil {
		return nil, fmt.Errorf("push to target %s: %w", ts.cfg.Name, err)
	}
	positions := make(map[string]int64)
	for i, ack := range acks {
		for j, p := range sent[i] {
			positions[p.pair.Key.Text] = event.Version(ack.Sequence, j)
		}
	}
	return positions, nil
}

// waitPubAcks waits for the acks of futures, as natsbus.WaitAcks does, and
// returns them in order.
func waitPubAcks(ctx context.Context, futures []jetstream.PubAckFuture) ([]*jetstream.PubAck, error) {
	timeout := time.NewTimer(natsbus.AckTimeout)
	defer timeout.Stop()
	acks := make([]*jetstream.PubAck, len(futures))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			acks[i] = ack
		case err := <-f.Err():
			return nil, fmt.Errorf("publish to %s: %w", f.Msg().Subject, err)
		case <-timeout.C:
			return nil, fmt.Errorf("publish to %s: no ack within %s", f.Msg().Subject, natsbus.AckTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return acks, nil
}

// batch builds a push batch in the stage layout with the source's types.
func (d *Differ) batch(cols *onewayv1.Batch, ds []decision, pattern onewayv1.CapturePattern) *onewayv1.Batch {
	b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: d.cfg.Pipeline, Origin: "differ",
		Pattern: pattern, Table: cols.GetTable(), Columns: cols.GetColumns()}
	now := time.Now().UnixNano()
	for _, p := range ds {
		c := &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, CapturedAtUnixNano: now}
		if src := p.pair.Source; src != nil {
			c.Version = uint64(src.Version)
		}
		if p.action.Deletes() {
			c.Op = onewayv1.Op_OP_DELETE
			vals := make([][]byte, len(d.layout.Columns))
			for i, k := range d.layout.Key {
				vals[k] = []byte(p.pair.Key.Parts[i])
			}
			c.Row = event.PackRow(vals)
		} else {
			c.Row, c.Hash = p.pair.Source.Row, p.pair.Source.Hash
		}
		b.Changes = append(b.Changes, c)
	}
	return b
}

// pushID is the Msg-Id of a push batch: a digest of what was decided from
// which state (key, action, both sides' versions, and which push of the
// source version it is). Deciding again from the same state (a redelivered
// staged message after a crash) publishes a duplicate, which the stream
// drops; any change on either side gives a new id, and so does a push sent
// again after its predecessor was not confirmed in time.
func pushID(target string, ds []decision) string {
	h := sha256.New()
	var buf [8]byte
	for _, p := range ds {
		h.Write([]byte(p.pair.Key.Text))
		h.Write([]byte{0, byte(p.action)})
		binary.BigEndian.PutUint64(buf[:], uint64(sourceVersion(p.pair)))
		h.Write(buf[:])
		tv := int64(-1)
		if p.pair.Target != nil {
			tv = p.pair.Target.Version
		}
		binary.BigEndian.PutUint64(buf[:], uint64(tv))
		h.Write(buf[:])
		binary.BigEndian.PutUint64(buf[:], uint64(p.push))
		h.Write(buf[:])
	}
	return "push:" + target + ":" + hex.EncodeToString(h.Sum(nil)[:16])
}

// columns is the stage layout with the source's types, as the stager
// saved it (read again at most every colsTTL); nil until a source batch was
// staged.
func (d *Differ) columns(ctx context.Context) *onewayv1.Batch {
	d.colsMu.Lock()
	defer d.colsMu.Unlock()
	if d.cols != nil && time.Since(d.colsAt) < colsTTL {
		return d.cols
	}
	e, err := d.kv.Get(ctx, bus.StageColumnsKey(d.cfg.Pipeline))
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			d.log.Warn("read stage layout failed; using the last one", "error", err)
		}
		return d.cols
	}
	if e.Revision() == d.colsRev && d.cols != nil {
		d.colsAt = time.Now()
		return d.cols
	}
	var b onewayv1.Batch
	if err := proto.Unmarshal(e.Value(), &b); err != nil || len(b.GetColumns()) != len(d.layout.Columns) {
		d.log.Error("stage layout does not match source.columns; ignored", "error", err, "columns", len(b.GetColumns()))
		return d.cols
	}
	d.cols, d.colsRev, d.colsAt = &b, e.Revision(), time.Now()
	return d.cols
}

// retry runs a stage call, waiting out outages.
func (d *Differ) retry(ctx context.Context, what string, op func(context.Context) error) error {
	return retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Attempts: 3,
		OnRetry: func(err error, wait time.Duration) {
			d.log.Warn("stage call failed; retrying", "call", what, "error", err, "wait", wait)
		}}, op)
}

func sample(keys []string) []string {
	if len(keys) > reportSamples {
		return keys[:reportSamples]
	}
	return keys
}

// breakerWindow is the deletes pushed to a target in the current window,
// kept in the state bucket so a restart does not forget them.
type breakerWindow struct {
	Since time.Time `json:"since"`
	Count int64     `json:"count"`
}

// breakerAllows decides whether n deletes may be pushed to ts now, and
// counts them in the window when they may. When they may not, the target's
// deletes are held (stage Hold) and a scan is asked for, to count what is
// pending.
func (d *Differ) breakerAllows(ctx context.Context, ts *targetState, n int) (bool, error) {
	if ts.cfg.Breaker.Allow {
		return true, nil
	}
	t := ts.cfg.Name
	hold, err := d.hold(ctx, t)
	if err != nil {
		return false, err
	}
	if hold != nil {
		return hold.State == stage.HoldApproved, nil
	}
	total, err := d.targetSize(ctx, ts)
	if err != nil {
		return false, err
	}
	limit := deleteLimit(ts.cfg.Breaker.MaxDeleteShare, total)
	key := bus.BreakerKey(d.cfg.Pipeline, t)
	for {
		w, rev, err := d.window(ctx, ts)
		if err != nil {
			return false, err
		}
		if w.Count+int64(n) > limit {
			// Held: a scan counts what is pending, for the operator.
			return false, d.trip(ctx, ts, stage.HoldCounts{Deletes: w.Count + int64(n), Total: total}, limit, true)
		}
		w.Count += int64(n)
		data, _ := json.Marshal(w)
		if rev == 0 {
			_, err = d.kv.Create(ctx, key, data)
		} else {
			_, err = d.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return true, nil
		}
		var api *jetstream.APIError
		if !errors.Is(err, jetstream.ErrKeyExists) && !(errors.As(err, &api) &&
			(api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)) {
			return false, fmt.Errorf("count deletes of target %s in %s: %w", t, key, err)
		}
		// Another differ counted meanwhile: read again.
	}
}

// deleteLimit is how many deletes the breaker lets through in a window:
// the share of the target's records, and at least one.
func deleteLimit(share float64, total int64) int64 {
	return max(1, int64(math.Floor(share*float64(total))))
}

// window reads the breaker window of ts (a fresh one when the stored one
// is older than breaker.window) and its revision (0: none stored).
func (d *Differ) window(ctx context.Context, ts *targetState) (breakerWindow, uint64, error) {
	key := bus.BreakerKey(d.cfg.Pipeline, ts.cfg.Name)
	now := time.Now()
	e, err := d.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return breakerWindow{Since: now}, 0, nil
	}
	if err != nil {
		return breakerWindow{}, 0, fmt.Errorf("read %s: %w", key, err)
	}
	var w breakerWindow
	if err := json.Unmarshal(e.Value(), &w); err != nil || now.Sub(w.Since) > ts.cfg.Breaker.Window.Duration || w.Since.After(now) {
		w = breakerWindow{Since: now}
	}
	return w, e.Revision(), nil
}

// resetWindow starts a new breaker window for ts (after approved deletes).
func (d *Differ) resetWindow(ctx context.Context, ts *targetState) error {
	data, _ := json.Marshal(breakerWindow{Since: time.Now()})
	if _, err := d.kv.Put(ctx, bus.BreakerKey(d.cfg.Pipeline, ts.cfg.Name), data); err != nil {
		return fmt.Errorf("reset the breaker window of target %s: %w", ts.cfg.Name, err)
	}
	return nil
}

// trip holds the deletes of ts, and asks for a scan to count them when
// scan is true.
func (d *Differ) trip(ctx context.Context, ts *targetState, c stage.HoldCounts, limit int64, scan bool) error {
	t := ts.cfg.Name
	var h stage.Hold
	err := d.retry(ctx, "hold", func(ctx context.Context) error {
		var err error
		h, err = d.store.Hold(ctx, t, c)
		return err
	})
	if err != nil {
		return fmt.Errorf("hold deletes of target %s: %w", t, err)
	}
	if h.State == stage.HoldHeld {
		d.log.Warn("mass-delete breaker: deletes held until `oneway approve`", "target", t,
			"deletes", c.Deletes, "target_records", c.Total, "limit", limit, "max_delete_share", ts.cfg.Breaker.MaxDeleteShare)
		if d.metrics != nil {
			d.metrics.BreakerHeld.WithLabelValues(d.cfg.Pipeline, t).Set(1)
		}
	}
	if scan && h.State == stage.HoldHeld {
		d.requestScan(t)
	}
	return nil
}

// hold returns the hold of target t, or nil.
func (d *Differ) hold(ctx context.Context, t string) (*stage.Hold, error) {
	var holds []stage.Hold
	err := d.retry(ctx, "holds", func(ctx context.Context) error {
		var err error
		holds, err = d.store.Holds(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read holds: %w", err)
	}
	for i := range holds {
		if holds[i].Target == t {
			return &holds[i], nil
		}
	}
	return nil, nil
}

// targetSize is the number of live records staged for target ts (cached
// for sizeTTL).
func (d *Differ) targetSize(ctx context.Context, ts *targetState) (int64, error) {
	if time.Since(ts.sizeAt) < sizeTTL {
		return ts.size, nil
	}
	var c stage.Counts
	err := d.retry(ctx, "count", func(ctx context.Context) error {
		var err error
		c, err = d.store.Count(ctx, stage.TargetSide(ts.cfg.Name))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("count records of target %s: %w", ts.cfg.Name, err)
	}
	ts.size, ts.sizeAt = c.Live, time.Now()
	return c.Live, nil
}

// requestScan asks for a scan of target t ("" = every target).
func (d *Differ) requestScan(t string) {
	d.scanMu.Lock()
	if t == "" {
		for _, ts := range d.targets {
			d.pending[ts.cfg.Name] = true
		}
	} else {
		d.pending[t] = true
	}
	d.scanMu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// InFlight counts the keys the differ last set aside because their push
// was in flight and has not decided since (plus one per target with more
// than it remembers): while it is not 0, the differ will still push or
// decide something without any new input. Safe for concurrent use.
func (d *Differ) InFlight() int {
	n := 0
	for _, ts := range d.targets {
		n += int(ts.asideN.Load())
	}
	return n
}

// recheckLoop looks again, every asideRecheck, at the keys set aside
// while their push was in flight: a writer's report that left the target
// as pushed is not handed on to the differ (the stager keeps it quiet),
// and a push that is never confirmed times out with nothing else to look
// at the key. Keys beyond asideCap are left to a scan of their target
// once the last of their pushes timed out (requested until one ran).
func (d *Differ) recheckLoop(ctx context.Context) error {
	tick := time.NewTicker(asideRecheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for _, ts := range d.targets {
			if err := d.recheck(ctx, ts); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.log.Warn("recheck of pushes in flight failed; retried at the next one", "target", ts.cfg.Name, "error", err)
			}
		}
	}
}

// recheck diffs the keys of ts set aside while their push was in flight.
func (d *Differ) recheck(ctx context.Context, ts *targetState) error {
	ts.mu.Lock()
	keys := make([]string, 0, len(ts.aside))
	for k := range ts.aside {
		keys = append(keys, k)
	}
	if !ts.asideOver.IsZero() && !time.Now().Before(ts.asideOver) {
		d.requestScan(ts.cfg.Name)
	}
	ts.mu.Unlock()
	slices.Sort(keys)
	var acks []jetstream.PubAckFuture
	if err := d.diffKeys(ctx, ts, keys, &acks); err != nil {
		return err
	}
	if err := natsbus.WaitAcks(ctx, acks); err != nil {
		return fmt.Errorf("push to target %s: %w", ts.cfg.Name, err)
	}
	return nil
}

// scanLoop runs requested scans, and scans every target each
// scan_interval.
func (d *Differ) scanLoop(ctx context.Context) error {
	tick := time.NewTicker(d.cfg.Stage.ScanInterval.Duration)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			d.requestScan("")
		case <-d.wake:
		}
		d.scanMu.Lock()
		todo := d.pending
		d.pending = map[string]bool{}
		d.scanMu.Unlock()
		all := len(todo) == len(d.targets)
		failed := false
		for _, ts := range d.targets {
			if !todo[ts.cfg.Name] {
				continue
			}
			if err := d.scanTarget(ctx, ts); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.log.Error("scan failed; retried at the next one", "target", ts.cfg.Name, "error", err)
				failed = true
				continue
			}
		}
		if all && !failed && d.OnScanned != nil {
			d.OnScanned()
		}
	}
}

// scanTarget diffs every key of ts, page by page. Deletes are pushed when
// the breaker is off or the target's hold is approved (then the hold is
// released and the window starts again); otherwise they are counted over
// the whole scan and pushed only when they fit the breaker, re-decided
// from the stage's state at that time; else the target's deletes are held
// with the scan's count.
func (d *Differ) scanTarget(ctx context.Context, ts *targetState) error {
	t := ts.cfg.Name
	start := time.Now()
	hold, err := d.hold(ctx, t)
	if err != nil {
		return err
	}
	approved := hold != nil && hold.State == stage.HoldApproved
	mode := deletesDeferred
	if ts.cfg.Breaker.Allow || approved {
		mode = deletesApproved
	}
	total, err := d.targetSize(ctx, ts)
	if err != nil {
		return err
	}
	limit := deleteLimit(ts.cfg.Breaker.MaxDeleteShare, total)
	var deleteKeys []string
	var deletes, keys int64
	after := ""
	// Pages' pushes are acked in bulks of scanAcks (bounded memory: a
	// future holds its message).
	var acks []jetstream.PubAckFuture
	tally := map[string]int{}
	for {
		done, err := func() (bool, error) {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			ts.tally = tally
			defer func() { ts.tally = nil }()
			var pairs []stage.Pair
			err := d.retry(ctx, "scan", func(ctx context.Context) error {
				var err error
				pairs, err = d.store.Scan(ctx, t, after, chunk)
				return err
			})
			if err != nil {
				return false, fmt.Errorf("scan target %s after %q: %w", t, after, err)
			}
			if len(pairs) == 0 {
				return true, nil
			}
			keys += int64(len(pairs))
			after = pairs[len(pairs)-1].Key.Text
			deferred, err := d.act(ctx, ts, pairs, mode, &acks)
			if err != nil {
				return false, err
			}
			if len(acks) >= scanAcks {
				if err := natsbus.WaitAcks(ctx, acks); err != nil {
					return false, fmt.Errorf("push to target %s: %w", t, err)
				}
				acks = acks[:0]
			}
			deletes += int64(len(deferred))
			for _, p := range deferred {
				if int64(len(deleteKeys)) <= limit {
					deleteKeys = append(deleteKeys, p.pair.Key.Text)
				}
			}
			return false, nil
		}()
		if err != nil {
			return err
		}
		if done {
			break
		}
	}
	if err := natsbus.WaitAcks(ctx, acks); err != nil {
		return fmt.Errorf("push to target %s: %w", t, err)
	}
	acks = acks[:0]
	ts.mu.Lock()
	if !ts.asideOver.IsZero() && ts.asideOver.Before(start) {
		// This scan looked at the keys set aside beyond the cap, after
		// their pushes timed out: it set aside again those still in flight.
		ts.asideOver = time.Time{}
		ts.countAside()
	}
	ts.mu.Unlock()
	d.log.Info("scan done", "target", t, "keys", keys, "pending_deletes", deletes, "seconds", time.Since(start).Seconds(),
		"pushed", tally["pushed"], "inserts", tally[diff.Insert.String()], "updates", tally[diff.Update.String()],
		"deletes", tally[diff.Delete.String()]+tally[diff.OrphanDelete.String()], "in_flight", tally["in_flight"],
		"stuck", tally["stuck"], "held", tally["held"], "kept_deleted", tally[diff.KeptDeleted.String()])
	if err := d.clearConverged(ctx, ts); err != nil {
		return err
	}
	switch {
	case approved:
		if err := d.retry(ctx, "release", func(ctx context.Context) error { return d.store.Release(ctx, t) }); err != nil {
			return fmt.Errorf("release the hold of target %s: %w", t, err)
		}
		if err := d.resetWindow(ctx, ts); err != nil {
			return err
		}
		d.log.Info("approved deletes pushed; hold released", "target", t, "approved_by", hold.ApprovedBy)
		d.setHeld(t, false)
		return nil
	case mode == deletesApproved || deletes == 0:
		if hold != nil {
			if err := d.retry(ctx, "release", func(ctx context.Context) error { return d.store.Release(ctx, t) }); err != nil {
				return fmt.Errorf("release the hold of target %s: %w", t, err)
			}
			d.log.Info("no deletes pending any more; hold released", "target", t)
		}
		d.setHeld(t, false)
		return nil
	}
	w, _, err := d.window(ctx, ts)
	if err != nil {
		return err
	}
	if w.Count+deletes > limit {
		return d.trip(ctx, ts, stage.HoldCounts{Deletes: deletes, Total: total}, limit, false)
	}
	if hold != nil {
		if err := d.retry(ctx, "release", func(ctx context.Context) error { return d.store.Release(ctx, t) }); err != nil {
			return fmt.Errorf("release the hold of target %s: %w", t, err)
		}
		d.setHeld(t, false)
	}
	// Few enough: push them as the incremental path does, from the state
	// they are in now.
	if err := d.diffKeys(ctx, ts, deleteKeys, &acks); err != nil {
		return err
	}
	if err := natsbus.WaitAcks(ctx, acks); err != nil {
		return fmt.Errorf("push deletes to target %s: %w", t, err)
	}
	return nil
}

// clearConverged forgets the push counts of the keys of ts that have
// converged: the keys the push log holds, joined again.
func (d *Differ) clearConverged(ctx context.Context, ts *targetState) error {
	t := ts.cfg.Name
	cols := d.columns(ctx)
	var cmp *diff.Comparer
	if cols != nil {
		cmp = diff.NewComparer(cols.GetColumns())
	}
	for after := ""; ; {
		var states []stage.PushState
		err := d.retry(ctx, "pushes", func(ctx context.Context) error {
			var err error
			states, err = d.store.Stuck(ctx, t, 1, after, chunk)
			return err
		})
		if err != nil {
			return fmt.Errorf("read push counts of target %s: %w", t, err)
		}
		if len(states) == 0 {
			return nil
		}
		after = states[len(states)-1].Key
		keys := make([]string, len(states))
		for i, st := range states {
			keys[i] = st.Key
		}
		err = func() error {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			var pairs []stage.Pair
			if err := d.retry(ctx, "join", func(ctx context.Context) error {
				var err error
				pairs, err = d.store.Join(ctx, t, keys)
				return err
			}); err != nil {
				return err
			}
			var converged []string
			for _, p := range pairs {
				eq := func(a, b *stage.Record) bool {
					return string(a.Hash) == string(b.Hash) || (cmp != nil && cmp.Equal(a.Row, b.Row))
				}
				if diff.Decide(p, ts.pol, eq) == diff.None {
					converged = append(converged, p.Key.Text)
				}
			}
			if len(converged) == 0 {
				return nil
			}
			return d.retry(ctx, "clear pushes", func(ctx context.Context) error {
				_, err := d.store.ClearPushes(ctx, t, converged)
				return err
			})
		}()
		if err != nil {
			return fmt.Errorf("clear push counts of target %s: %w", t, err)
		}
	}
}

func (d *Differ) setHeld(t string, held bool) {
	if d.metrics == nil {
		return
	}
	v := 0.0
	if held {
		v = 1
	}
	d.metrics.BreakerHeld.WithLabelValues(d.cfg.Pipeline, t).Set(v)
}

// holdLoop asks for a scan of every target whose held deletes an operator
// approved.
func (d *Differ) holdLoop(ctx context.Context) error {
	tick := time.NewTicker(holdPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		holds, err := d.store.Holds(ctx)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("read holds failed", "error", err)
			}
			continue
		}
		for _, h := range holds {
			d.setHeld(h.Target, h.State == stage.HoldHeld)
			if h.State == stage.HoldApproved {
				d.requestScan(h.Target)
			}
		}
	}
}
