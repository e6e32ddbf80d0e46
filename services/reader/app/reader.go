// Package app is the reader service: it reads the System of Record and
// publishes change batches to oneway.<pipeline>.source. integration/ and
// `oneway up` run it in-process through New and Run.
package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/pgsource"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Position is where the reader is, stored as JSON in the state bucket. It
// only ever names data that JetStream has acknowledged.
type Position struct {
	// Phase is "snapshot" or "watermark".
	Phase string `json:"phase"`
	// SnapshotBound is the watermark bound when the snapshot began; the
	// watermark phase starts there.
	SnapshotBound string `json:"snapshot_bound,omitempty"`
	// SnapshotKey is the last key published by the snapshot.
	SnapshotKey []string `json:"snapshot_key,omitempty"`
	// Watermark and WatermarkKey are the last (watermark, key) published.
	Watermark    string   `json:"watermark,omitempty"`
	WatermarkKey []string `json:"watermark_key,omitempty"`
}

const (
	phaseSnapshot  = "snapshot"
	phaseWatermark = "watermark"
)

// Reader runs one pipeline's source side.
type Reader struct {
	cfg     *config.Pipeline
	bus     *natsbus.Bus
	log     *slog.Logger
	metrics *telemetry.Metrics

	// OnCaughtUp, when set before Run, is called each time the reader has
	// published everything below the current watermark bound, with the
	// stream sequence of its last publish (0 if none yet).
	OnCaughtUp func(lastSeq uint64)

	lastSeq atomic.Uint64
}

// New returns a reader for cfg's source. metrics may be nil.
func New(cfg *config.Pipeline, b *natsbus.Bus, log *slog.Logger, metrics *telemetry.Metrics) *Reader {
	return &Reader{cfg: cfg, bus: b, log: log.With("component", "reader"), metrics: metrics}
}

// Name implements runner.Component.
func (r *Reader) Name() string { return "reader" }

// item is one unit of work from the producer to the publisher.
type item struct {
	batch    *onewayv1.Batch
	msgID    string
	next     Position // the position once this batch is acknowledged
	rows     int
	caughtUp bool // a marker: everything before it is below the bound
}

// Run reads until ctx ends. It returns nil after a clean stop.
func (r *Reader) Run(ctx context.Context) error {
	src := r.cfg.Source
	schema, table, err := config.SplitTable(src.Table)
	if err != nil {
		return errs.Permanent(fmt.Errorf("source table: %w", err))
	}
	pool, err := pgconn.Open(ctx, src.URL.Value(), "oneway-reader-"+r.cfg.Pipeline, 4)
	if err != nil {
		return err
	}
	defer pool.Close()

	var source *pgsource.Source
	err = retry.Do(ctx, r.retryPolicy(), func(ctx context.Context) error {
		var err error
		source, err = pgsource.Open(ctx, pool, pgsource.Spec{
			Table: pgconn.Table{Schema: schema, Name: table}, Key: src.Key,
			Columns: src.Columns, WatermarkColumn: src.Capture.Column,
		}, r.log)
		return pgconn.Classify(err)
	})
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	if _, err := r.bus.EnsureStream(ctx, natsbus.PipelineStream(r.cfg)); err != nil {
		return err
	}
	kv, err := r.bus.StateKV(ctx, r.cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	holder := holderID()
	wait := outageWait{}
	for {
		l, err := acquireLease(ctx, kv, bus.ReaderLeaseKey(r.cfg.Pipeline, "source"), holder, r.log)
		if err != nil {
			return nil // ctx ended while standing by
		}
		began := time.Now()
		err = r.runActive(ctx, source, kv, l)
		l.stop()
		switch {
		case errors.Is(err, errFenced):
			r.log.Warn("another reader published meanwhile; this reader stands by", "error", err)
			continue
		case errors.Is(err, errLeaseLost):
			r.log.Warn("reader lease not renewed in time; this reader stands by until it can take it again")
			continue
		case err != nil && ctx.Err() == nil && errs.IsUnavailable(err):
			// JetStream without a quorum, electing a leader, or out of
			// reach: what was acknowledged is saved, so start over from
			// the saved position once it answers again.
			d := wait.next(time.Since(began))
			r.log.Warn("JetStream unavailable; the reader resumes from its saved position when it answers", "error", err, "wait", d)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			continue
		}
		return err
	}
}

// outageWait is the growing pause between attempts of an active reader
// that JetStream keeps refusing: 500 ms doubling to 10 s, back to the
// start after a stint of a minute or more.
type outageWait struct{ d time.Duration }

func (w *outageWait) next(stint time.Duration) time.Duration {
	switch {
	case w.d == 0 || stint >= time.Minute:
		w.d = 500 * time.Millisecond
	default:
		w.d = min(2*w.d, 10*time.Second)
	}
	return w.d
}

// jsUnavailable marks a JetStream failure that waiting can cure (no
// quorum, a leader election, a 503, a timeout, a lost connection) as
// errs.Unavailable. An error JetStream returns for good (a 4xx API error,
// such as a stream that does not exist) and a permanent one stay as they
// are.
func jsUnavailable(err error) error {
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) {
		return err
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code >= 400 && api.Code < 500 {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return errs.Unavailable(err)
}

// errFenced means another reader appended to the subject: this one is no
// longer the active reader.
var errFenced = errors.New("fenced by another reader")

// errLeaseLost means this reader could not renew its lease in time (another
// reader may take it over): it stops publishing and stands by.
var errLeaseLost = errors.New("reader lease lost")

// runActive reads and publishes while this reader holds the lease.
func (r *Reader) runActive(parent context.Context, source *pgsource.Source, kv jetstream.KeyValue, l *lease) error {
	pos, err := loadPosition(parent, kv, r.cfg.Pipeline)
	if err != nil {
		return err
	}
	st, err := r.bus.JS.Stream(parent, bus.StreamName(r.cfg.Pipeline))
	if err != nil {
		return fmt.Errorf("open stream: %w", jsUnavailable(err))
	}
	last, err := lastSeqOn(parent, st, bus.SourceSubject(r.cfg.Pipeline))
	if err != nil {
		return err
	}
	r.log.Info("reader active", "table", r.cfg.Source.Table, "phase", pos.Phase, "watermark", pos.Watermark, "last_stream_seq", last)

	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		select {
		case <-l.lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	items := make(chan item, 4)
	var wg sync.WaitGroup
	var prodErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(items)
		prodErr = r.produce(ctx, source, pos, items)
		if prodErr != nil {
			cancel()
		}
	}()
	pubErr := r.publish(ctx, kv, st, last, pos, items)
	cancel()
	wg.Wait()
	// Drain whatever the producer left; it is not acknowledged, so the
	// saved position does not cover it and a restart reads it again.
	for range items {
	}
	if errors.Is(pubErr, errFenced) {
		return pubErr
	}
	select {
	case <-l.lost:
		if parent.Err() == nil {
			return errLeaseLost
		}
	default:
	}
	if err := errors.Join(prodErr, pubErr); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// lastSeqOn is the sequence of the last message on subject, 0 if none.
func lastSeqOn(ctx context.Context, st jetstream.Stream, subject string) (uint64, error) {
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read last sequence of %s: %w", subject, jsUnavailable(err))
	}
	return m.Sequence, nil
}

func (r *Reader) retryPolicy() retry.Policy {
	return retry.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second, Attempts: 10,
		OnRetry: func(err error, wait time.Duration) {
			r.log.Warn("source read failed; retrying", "error", err, "wait", wait)
		}}
}

// produce reads pages from the source and sends them in source order.
func (r *Reader) produce(ctx context.Context, src *pgsource.Source, pos Position, out chan<- item) error {
	capt := r.cfg.Source.Capture
	limit := capt.BatchSize
	lookback := capt.Lookback.Seconds()
	send := func(it item) error {
		select {
		case out <- it:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	read := func(f func(ctx context.Context) error) error { return retry.Do(ctx, r.retryPolicy(), f) }

	if pos.Phase == "" {
		var bound string
		if err := read(func(ctx context.Context) (err error) { bound, err = src.SafeBound(ctx, lookback); return }); err != nil {
			return err
		}
		pos = Position{Phase: phaseSnapshot, SnapshotBound: bound}
		r.log.Info("snapshot starting", "bound", bound)
	}
	for pos.Phase == phaseSnapshot {
		var rows []pgsource.Row
		if err := read(func(ctx context.Context) (err error) {
			rows, err = src.SnapshotPage(ctx, pos.SnapshotKey, limit)
			return
		}); err != nil {
			return err
		}
		if len(rows) == 0 {
			next := Position{Phase: phaseWatermark, Watermark: pos.SnapshotBound}
			r.log.Info("snapshot done; watermark phase starting", "watermark", next.Watermark)
			if err := send(item{next: next}); err != nil {
				return err
			}
			pos = next
			break
		}
		var err error
		pos, err = r.sendRows(src, onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT, pos, rows, send, func(p Position, row pgsource.Row) Position {
			p.SnapshotKey = src.KeyOf(row)
			return p
		})
		if err != nil {
			return err
		}
	}
	for {
		var bound string
		if err := read(func(ctx context.Context) (err error) { bound, err = src.SafeBound(ctx, lookback); return }); err != nil {
			return err
		}
		for {
			var rows []pgsource.Row
			if err := read(func(ctx context.Context) (err error) {
				rows, err = src.WatermarkPage(ctx, pos.Watermark, pos.WatermarkKey, bound, limit)
				return
			}); err != nil {
				return err
			}
			r.log.Debug("watermark poll", "bound", bound, "after", pos.Watermark, "rows", len(rows))
			if len(rows) > 0 {
				var err error
				pos, err = r.sendRows(src, onewayv1.CapturePattern_CAPTURE_PATTERN_WATERMARK, pos, rows, send, func(_ Position, row pgsource.Row) Position {
					return Position{Phase: phaseWatermark, Watermark: src.WatermarkOf(row), WatermarkKey: src.KeyOf(row)}
				})
				if err != nil {
					return err
				}
			}
			if len(rows) < limit {
				break
			}
		}
		if err := send(item{caughtUp: true, next: pos}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(capt.PollInterval.Duration):
		}
	}
}

// sendRows sends a page as one message, or as several when it would not
// fit the server's max_payload: each message stays under three quarters of
// it, and each ends at a row, whose position (posAfter) it carries. It
// returns the position after the page.
func (r *Reader) sendRows(src *pgsource.Source, pattern onewayv1.CapturePattern, pos Position, rows []pgsource.Row,
	send func(item) error, posAfter func(Position, pgsource.Row) Position) (Position, error) {
	budget := int(r.bus.NC.MaxPayload()) * 3 / 4
	start, size := 0, 0
	for i, row := range rows {
		n := 48 // per-change overhead: hash, varints, timestamp
		for _, v := range row {
			n += len(v) + 2
		}
		if i > start && size+n > budget {
			next := posAfter(pos, rows[i-1])
			if err := send(r.item(src, pattern, pos, next, rows[start:i])); err != nil {
				return pos, err
			}
			pos, start, size = next, i, 0
		}
		size += n
	}
	next := posAfter(pos, rows[len(rows)-1])
	if err := send(r.item(src, pattern, pos, next, rows[start:])); err != nil {
		return pos, err
	}
	return next, nil
}

func (r *Reader) item(src *pgsource.Source, pattern onewayv1.CapturePattern, from, next Position, rows []pgsource.Row) item {
	now := time.Now().UnixNano()
	b := &onewayv1.Batch{
		SchemaVersion: event.SchemaVersion, Pipeline: r.cfg.Pipeline, Origin: "source",
		Pattern: pattern, Table: r.cfg.Source.Table, Columns: src.Columns(),
		Changes: make([]*onewayv1.Change, len(rows)),
	}
	content := sha256.New()
	for i, row := range rows {
		packed := event.PackRow(row)
		h := event.RowHash(packed)
		content.Write(h)
		b.Changes[i] = &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: packed, Hash: h, CapturedAtUnixNano: now}
	}
	// The Msg-Id names the page by where it starts and what it holds: a
	// republish of the same page after a crash is a duplicate, a page whose
	// content changed meanwhile is a new message (harmless: writers fence).
	fromJSON, _ := json.Marshal(from)
	content.Write(fromJSON)
	id := r.cfg.Pipeline + ":source:" + hex.EncodeToString(content.Sum(nil)[:16])
	return item{batch: b, msgID: id, next: next, rows: len(rows)}
}

// publish sends items in order, one at a time, each retried with its Msg-Id
// until JetStream acknowledges it, so stream order is source order (the
// stream sequence is the version writers fence on). Each publish expects
// last to be the subject's last sequence, so only one reader can append.
// The position is saved only after the ack, at most every 250 ms and at
// the end.
func (r *Reader) publish(ctx context.Context, kv jetstream.KeyValue, st jetstream.Stream, last uint64, pos Position, items <-chan item) error {
	subject := bus.SourceSubject(r.cfg.Pipeline)
	saved := pos
	lastSave := time.Now()
	save := func(ctx context.Context) error {
		if equalPos(saved, pos) {
			return nil
		}
		if err := savePosition(ctx, kv, r.cfg.Pipeline, pos); err != nil {
			return err
		}
		saved, lastSave = pos, time.Now()
		return nil
	}
	defer func() {
		// Save what is acknowledged even when stopping.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := save(sctx); err != nil {
			r.log.Warn("final position save failed; a restart republishes (deduplicated)", "error", err)
		}
	}()
	for it := range items {
		if it.batch != nil {
			data, err := event.Encode(it.batch)
			if err != nil {
				return errs.Permanent(err)
			}
			if max := r.bus.NC.MaxPayload(); int64(len(data)) > max {
				k := event.Key(it.batch.GetChanges()[0], event.KeyIndexes(it.batch))
				return errs.Permanentf("table %s: the row with key %s alone encodes to %d bytes, more than the NATS server's max_payload (%d): raise max_payload or leave large columns out of source.columns",
					r.cfg.Source.Table, k, len(data), max)
			}
			var seq uint64
			var dup bool
			err = retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second,
				OnRetry: func(err error, wait time.Duration) {
					if streamFull(err) {
						r.log.Warn("stream full: publish refused; retrying with the same Msg-Id",
							"stream", bus.StreamName(r.cfg.Pipeline), "max_bytes", r.cfg.NATS.MaxBytes, "error", err, "wait", wait,
							"hint", "nothing stored is dropped (DiscardNew) and the position does not advance; raise nats.max_bytes, or let consumed messages age out (nats.max_age)")
						return
					}
					r.log.Warn("publish failed; retrying with the same Msg-Id", "error", err, "wait", wait)
				}}, func(ctx context.Context) error {
				var err error
				seq, dup, err = publishFenced(ctx, r.bus.JS, st, subject, data, it.msgID, last)
				return err
			})
			if err != nil {
				return fmt.Errorf("publish batch to %s: %w", subject, err)
			}
			if dup {
				// A page published before a crash, whose position was not
				// saved: JetStream recognised its Msg-Id.
				r.log.Info("batch already in the stream; not stored again", "msg_id", it.msgID, "rows", it.rows)
			}
			last = seq
			r.lastSeq.Store(seq)
			if r.metrics != nil {
				r.metrics.EventsProcessed.WithLabelValues("reader", r.cfg.Pipeline, "published").Add(float64(it.rows))
			}
		}
		pos = it.next
		if it.caughtUp {
			if err := save(ctx); err != nil {
				return err
			}
			if r.OnCaughtUp != nil {
				r.OnCaughtUp(r.lastSeq.Load())
			}
			continue
		}
		if time.Since(lastSave) > 250*time.Millisecond {
			if err := save(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

func equalPos(a, b Position) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func loadPosition(ctx context.Context, kv jetstream.KeyValue, pipeline string) (Position, error) {
	var pos Position
	e, err := kv.Get(ctx, bus.ReaderPositionKey(pipeline, "source"))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return pos, nil
	}
	if err != nil {
		return pos, fmt.Errorf("load reader position: %w", jsUnavailable(err))
	}
	if err := json.Unmarshal(e.Value(), &pos); err != nil {
		return pos, errs.Permanentf("reader position in %s is corrupt (%v); delete key %s to start over",
			bus.StateBucket, err, bus.ReaderPositionKey(pipeline, "source"))
	}
	return pos, nil
}

func savePosition(ctx context.Context, kv jetstream.KeyValue, pipeline string, pos Position) error {
	data, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, bus.ReaderPositionKey(pipeline, "source"), data); err != nil {
		return fmt.Errorf("save reader position: %w", jsUnavailable(err))
	}
	return nil
}

// publishFenced publishes data on subject expecting last to be the
// subject's last stream sequence, and returns the subject's new last
// sequence (unchanged, with dup set, when JetStream reports a duplicate).
// A refusal because the subject moved on is resolved by looking at the
// message that is there: our own Msg-Id means an earlier attempt of this
// publish was stored (its ack was lost), anything else means another reader
// appended and this one is fenced (errFenced, permanent). Other failures
// (refused by limits, no quorum, timeouts) are Unavailable: retry, never
// advance.
func publishFenced(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, subject string, data []byte, msgID string, last uint64) (seq uint64, dup bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := js.Publish(pctx, subject, data, jetstream.WithMsgID(msgID), jetstream.WithExpectLastSequencePerSubject(last))
	if err == nil {
		if ack.Duplicate {
			// An earlier message with this Msg-Id (a republish after a
			// restart): the subject's last sequence did not move.
			return last, true, nil
		}
		return ack.Sequence, false, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		m, gerr := st.GetLastMsgForSubject(pctx, subject)
		if gerr != nil {
			return 0, false, errs.Unavailable(fmt.Errorf("resolve refused publish: %w", gerr))
		}
		if m.Header.Get(jetstream.MsgIDHeader) == msgID {
			return m.Sequence, false, nil
		}
		return 0, false, errs.Permanent(fmt.Errorf("%w: subject %s is at sequence %d, this reader expected %d", errFenced, subject, m.Sequence, last))
	}
	return 0, false, errs.Unavailable(err)
}

// streamFull reports a publish the stream refused because it reached a
// limit (max_bytes, max_msgs) under DiscardNew.
func streamFull(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeStreamStoreFailed &&
		strings.Contains(apiErr.Description, "maximum")
}

// jsErrCodeStreamStoreFailed is the server's JSStreamStoreFailedF, which
// carries "maximum bytes exceeded" and "maximum messages exceeded" (the
// client library names no constant for it).
const jsErrCodeStreamStoreFailed jetstream.ErrorCode = 10077
