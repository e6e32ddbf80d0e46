// Package app is the reader service: it reads the System of Record and
// publishes change batches to oneway.<pipeline>.source, and in staged mode
// reads targets back (NewReadback) onto oneway.<pipeline>.target.<t>.
// integration/ and `oneway up` run it in-process through New and Run.
package app

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/capture"
	"github.com/oneway-sync/oneway/services/reader/internal/pgcdc"
	"github.com/oneway-sync/oneway/services/reader/internal/pgsource"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/progress"
	"github.com/oneway-sync/oneway/shared/recordsource"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/sqlsource"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Position is where the reader is, stored as JSON in the state bucket.
type Position = capture.Position

// Reader runs one side of a pipeline: its source, or a target read back.
type Reader struct {
	cfg     *config.Pipeline
	side    side
	bus     *natsbus.Bus
	log     *slog.Logger
	metrics *telemetry.Metrics

	// OnCaughtUp, when set before Run, is called each time the reader has
	// published everything below the current watermark bound (or a whole
	// cycle, for synthetic and window), with the stream sequence of its
	// last publish (0 if none yet).
	OnCaughtUp func(lastSeq uint64)

	lastSeq atomic.Uint64
	// tableEstimate is the source table's row estimate (reltuples), the
	// total of the snapshot's progress lines; 0 when unknown.
	tableEstimate atomic.Int64
}

// New returns a reader for cfg's source. metrics may be nil.
func New(cfg *config.Pipeline, b *natsbus.Bus, log *slog.Logger, metrics *telemetry.Metrics) *Reader {
	return newReader(cfg, sourceSide(cfg), b, log, metrics)
}

func newReader(cfg *config.Pipeline, s side, b *natsbus.Bus, log *slog.Logger, metrics *telemetry.Metrics) *Reader {
	return &Reader{cfg: cfg, side: s, bus: b, log: log.With("component", s.service), metrics: metrics}
}

// Name implements runner.Component: "reader", or "readback-<t>".
func (r *Reader) Name() string { return r.side.service }

// Run reads until ctx ends. It returns nil after a clean stop.
func (r *Reader) Run(ctx context.Context) error {
	if r.side.src.Kind == config.KindKafka {
		return r.runKafka(ctx)
	}
	src := r.side.src
	if _, err := r.bus.EnsureStream(ctx, natsbus.PipelineStream(r.cfg)); err != nil {
		return err
	}
	kv, err := r.bus.StateKV(ctx, r.cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	setup := capture.Setup{Pattern: src.Capture.Pattern, Source: sourceName(src)}
	var capt capture.Capture
	if src.Capture.Pattern == config.PatternCDC {
		cdc, err := r.openCDC(ctx)
		if err != nil {
			return err
		}
		defer cdc.Close()
		capt = r.newCDC(cdc)
		setup.Slot = src.Capture.Slot
	} else {
		source, closeSource, err := r.openSource(ctx)
		if err != nil {
			return err
		}
		defer closeSource()
		obj, err := r.bus.CaptureStore(ctx, r.cfg.NATS.Replicas)
		if err != nil {
			return err
		}
		capt = r.newCapture(source, capture.NewStore(r.bus.JS, obj))
		_, setup.NumericWatermark = source.HasWatermark()
		if !config.IsCyclePattern(src.Capture.Pattern) {
			setup.Column = src.Capture.Column
		}
	}
	holder := holderID()
	wait := outageWait{}
	for {
		l, err := acquireLease(ctx, kv, bus.ReaderLeaseKey(r.cfg.Pipeline, r.side.name), holder, r.log)
		if err != nil {
			return nil // ctx ended while standing by
		}
		began := time.Now()
		err = r.runActive(ctx, capt, setup, kv, l)
		l.stop()
		switch {
		case errors.Is(err, errFenced):
			r.log.Warn("another reader published meanwhile; this reader stands by", "error", err)
			continue
		case errors.Is(err, errStreamLost):
			r.log.Warn("the pipeline stream no longer holds this reader's last message; checking the stream again", "error", err)
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

// waitTable returns once table exists, checking every poll interval (at
// least 100 ms, at most 5 s), or with nil when ctx ends (Run then stops
// cleanly).
func (r *Reader) waitTable(ctx context.Context, pool pgconn.Querier, table pgconn.Table) error {
	every := min(max(r.side.src.Capture.PollInterval.Duration, 100*time.Millisecond), 5*time.Second)
	logged := false
	for {
		var found bool
		err := retry.Do(ctx, r.retryPolicy(), func(ctx context.Context) error {
			var err error
			_, found, err = pgconn.Columns(ctx, pool, table)
			return pgconn.Classify(err)
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("look up table %s: %w", table, err)
		case found:
			return nil
		case !logged:
			logged = true
			r.log.Info("table does not exist yet; waiting for its writer to create it", "table", table.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// waitSQLiteTable is waitTable for a SQLite target: it returns once the
// file at path has table, or with nil when ctx ends. It only reads (the
// file is opened read-only, so a missing one is not created).
func (r *Reader) waitSQLiteTable(ctx context.Context, path, table string) error {
	every := min(max(r.side.src.Capture.PollInterval.Duration, 100*time.Millisecond), 5*time.Second)
	abs, err := filepath.Abs(path)
	if err != nil {
		return errs.Permanent(fmt.Errorf("sqlite target path %q: %w", path, err))
	}
	logged := false
	for {
		found, err := sqliteHasTable(ctx, abs, table)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("look up table %q in %s: %w", table, abs, err)
		case found:
			return nil
		case !logged:
			logged = true
			r.log.Info("table does not exist yet; waiting for its writer to create it", "table", table, "path", abs)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// sqliteHasTable reports whether the SQLite file at path exists and has
// table (names compared as SQLite does, ASCII case folded).
func sqliteHasTable(ctx context.Context, path, table string) (bool, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	db, err := sql.Open("sqlite", "file:"+r.Replace(filepath.ToSlash(path))+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return false, err
	}
	defer db.Close()
	var n int
	err = db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE", table).Scan(&n)
	return n > 0, err
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

var _ capture.Source = (*recordsource.Source)(nil)

// openSource opens the configured source (postgres, sqlite, mysql; csv,
// jsonl and http through recordsource),
// retrying while it is unreachable, and returns it with its close.
func (r *Reader) openSource(ctx context.Context) (capture.Source, func(), error) {
	src := r.side.src
	if config.IsRecordSource(src.Kind) {
		// Opening reads nothing yet: the listings' errors come from the
		// pattern's reads, which retry the transient ones.
		source, err := recordsource.Open(src, r.log)
		if err != nil {
			return nil, nil, fmt.Errorf("open source: %w", err)
		}
		return source, func() { source.Close() }, nil
	}
	if src.Kind == config.KindSQLite || src.Kind == config.KindMySQL {
		spec, err := sqlSourceSpec(src)
		if err != nil {
			return nil, nil, err
		}
		if r.side.name != "source" && src.Kind == config.KindSQLite {
			// A target's file and table may not exist yet: its writer
			// creates them.
			if err := r.waitSQLiteTable(ctx, spec.URL, spec.Table); err != nil {
				return nil, nil, err
			}
		}
		var source *sqlsource.Source
		err = retry.Do(ctx, r.retryPolicy(), func(ctx context.Context) error {
			var err error
			source, err = sqlsource.Open(ctx, spec, r.log)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("open source: %w", err)
		}
		return source, func() { source.Close() }, nil
	}
	spec, err := sourceSpec(src)
	if err != nil {
		return nil, nil, err
	}
	pool, err := pgconn.Open(ctx, src.URL.Value(), r.application(), 4)
	if err != nil {
		return nil, nil, err
	}
	if r.side.name != "source" {
		// A target's table may not exist yet: its writer creates it.
		if err := r.waitTable(ctx, pool, spec.Table); err != nil {
			pool.Close()
			return nil, nil, err
		}
	}
	var source *pgsource.Source
	err = retry.Do(ctx, r.retryPolicy(), func(ctx context.Context) error {
		var err error
		source, err = pgsource.Open(ctx, pool, spec, r.log)
		return pgconn.Classify(err)
	})
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("open source: %w", err)
	}
	// The table's row estimate gives the snapshot's progress lines an ETA.
	var estimate int64
	if err := pool.QueryRow(ctx, "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)",
		spec.Table.Quoted()).Scan(&estimate); err == nil {
		r.tableEstimate.Store(estimate)
	}
	return source, pool.Close, nil
}

// sqlSourceSpec is what the configured pattern reads from a sqlite or
// mysql source.
func sqlSourceSpec(src config.Source) (sqlsource.Spec, error) {
	capt := src.Capture
	spec := sqlsource.Spec{Kind: src.Kind, URL: src.URL.Value(), Key: src.Key, Columns: src.Columns,
		SoftDeleteColumn: capt.DeleteFeed.SoftDeleteColumn}
	var err error
	if src.Kind == config.KindMySQL {
		spec.Database, spec.Table, err = config.SplitMySQLTable(src.Table)
	} else {
		_, spec.Table, err = config.SplitTable(src.Table) // SQLite has no schemas
	}
	if err != nil {
		return spec, errs.Permanent(fmt.Errorf("source table: %w", err))
	}
	switch capt.Pattern {
	case config.PatternWatermark, config.PatternWatermarkCDC:
		spec.WatermarkColumn = capt.Column
		spec.Coarse = capt.Pattern == config.PatternWatermarkCDC
		if capt.DeleteFeed.Table != "" {
			return spec, errs.Permanentf("a %s source has no delete feed table support; use soft_delete_column", src.Kind)
		}
	case config.PatternWindow:
		spec.WindowColumn = capt.Column
	case config.PatternSynthetic:
	default:
		return spec, errs.Permanentf("capture pattern %q is not supported for a %s source", capt.Pattern, src.Kind)
	}
	return spec, nil
}

// application is the PostgreSQL application_name of the reader's
// connections.
func (r *Reader) application() string {
	if r.side.name == "source" {
		return "oneway-reader-" + r.cfg.Pipeline
	}
	return "oneway-" + r.side.service + "-" + r.cfg.Pipeline
}

// sourceSpec is what src's pattern reads.
func sourceSpec(src config.Source) (pgsource.Spec, error) {
	capt := src.Capture
	schema, table, err := config.SplitTable(src.Table)
	if err != nil {
		return pgsource.Spec{}, errs.Permanent(fmt.Errorf("table %s: %w", src.Table, err))
	}
	spec := pgsource.Spec{
		Table: pgconn.Table{Schema: schema, Name: table}, Key: src.Key, Columns: src.Columns,
		SoftDeleteColumn: capt.DeleteFeed.SoftDeleteColumn,
	}
	switch capt.Pattern {
	case config.PatternWatermark, config.PatternWatermarkCDC:
		spec.WatermarkColumn = capt.Column
		if capt.Pattern == config.PatternWatermarkCDC {
			spec.Marks, spec.Epoch = pgsource.MarksCoarse, true
		}
		if capt.DeleteFeed.Table != "" {
			ds, dt, err := config.SplitTable(capt.DeleteFeed.Table)
			if err != nil {
				return spec, errs.Permanent(fmt.Errorf("delete feed table: %w", err))
			}
			spec.DeleteTable, spec.DeletePointer = pgconn.Table{Schema: ds, Name: dt}, capt.DeleteFeed.Column
		}
	case config.PatternWindow:
		spec.WindowColumn = capt.Column
	case config.PatternSynthetic:
	default:
		return spec, errs.Permanentf("capture pattern %q is not implemented by the reader", capt.Pattern)
	}
	return spec, nil
}

// sourceName names the table and key a position is about.
func sourceName(src config.Source) string {
	t := src.Table
	if schema, table, err := config.SplitTable(t); err == nil {
		t = schema + "." + table
	}
	return t + "(" + strings.Join(src.Key, ",") + ")"
}

// newCapture builds the configured pattern's capture.
func (r *Reader) newCapture(source capture.Source, store *capture.Store) capture.Capture {
	c := r.side.src.Capture
	layout := capture.Layout{
		Pipeline: r.cfg.Pipeline, Origin: r.side.origin(), Table: r.side.src.Table, Columns: source.Columns(),
		KeyIdx: source.KeyIndexes(), Budget: int(r.bus.NC.MaxPayload()) * 3 / 4,
	}
	switch c.Pattern {
	case config.PatternSynthetic, config.PatternWindow:
		cyc := &capture.Cycle{Source: source, Layout: layout, Store: store,
			ObjectName: bus.CaptureObject(r.cfg.Pipeline, r.side.name, "hashes"),
			Window:     c.Window.Duration, BatchSize: c.BatchSize, Interval: c.PollInterval.Duration,
			Lookback: c.Lookback.Duration, Log: r.log, Retry: r.retryPolicy(),
			Published: &publishedOn{js: r.bus.JS, stream: bus.StreamName(r.cfg.Pipeline), subject: r.side.subject}}
		if r.side.applied != "" {
			cyc.Reported = &publishedOn{js: r.bus.JS, stream: bus.StreamName(r.cfg.Pipeline), subject: r.side.applied}
		}
		return cyc
	default:
		return &capture.Watermark{Source: source, Layout: layout, BatchSize: c.BatchSize,
			Interval: c.PollInterval.Duration, Lookback: c.Lookback.Duration,
			CDC: c.Pattern == config.PatternWatermarkCDC, Overlap: c.Overlap.Duration,
			Store: store, ObjectName: bus.CaptureObject(r.cfg.Pipeline, r.side.name, "overlap"),
			Log: r.log, Retry: r.retryPolicy()}
	}
}

// cdcConfig is what the cdc pattern captures of src.
func cdcConfig(src config.Source, application string) (pgcdc.Config, error) {
	schema, table, err := config.SplitTable(src.Table)
	if err != nil {
		return pgcdc.Config{}, errs.Permanent(fmt.Errorf("source table: %w", err))
	}
	return pgcdc.Config{
		URL: src.URL.Value(), Application: application,
		Slot: src.Capture.Slot, Publication: src.Capture.Publication,
		Tables:    []pgcdc.TableSpec{{Table: pgconn.Table{Schema: schema, Name: table}, Key: src.Key, Columns: src.Columns}},
		WALBudget: src.Capture.WALBudget, ChunkChanges: src.Capture.BatchSize,
	}, nil
}

// openCDC checks the source and prepares its publication (pgcdc.Open),
// retrying while the source is unreachable.
func (r *Reader) openCDC(ctx context.Context) (*pgcdc.Capture, error) {
	cfg, err := cdcConfig(r.side.src, r.application())
	if err != nil {
		return nil, err
	}
	var c *pgcdc.Capture
	err = retry.Do(ctx, r.retryPolicy(), func(ctx context.Context) error {
		var err error
		c, err = pgcdc.Open(ctx, cfg, r.log)
		return pgconn.Classify(err)
	})
	if err != nil {
		return nil, fmt.Errorf("open source for cdc: %w", err)
	}
	return c, nil
}

// newCDC builds the cdc pattern's capture; its slot state feeds the cdc
// gauges.
func (r *Reader) newCDC(c *pgcdc.Capture) *capture.CDC {
	capt := r.side.src.Capture
	cdc := &capture.CDC{Source: c,
		Layout: capture.Layout{Pipeline: r.cfg.Pipeline, Origin: r.side.origin(), Table: r.side.src.Table,
			Budget: int(r.bus.NC.MaxPayload()) * 3 / 4},
		BatchSize: capt.BatchSize, Idle: capt.PollInterval.Duration, Slot: capt.Slot,
		Log: r.log, Retry: r.retryPolicy()}
	if m := r.metrics; m != nil {
		p := r.cfg.Pipeline
		cdc.OnSlotState = func(st pgcdc.SlotState) {
			m.CDCSlotLag.WithLabelValues(p).Set(float64(st.LagBytes))
			m.CDCSlotRetained.WithLabelValues(p).Set(float64(st.RetainedBytes))
			over := 0.0
			if st.OverBudget {
				over = 1
			}
			m.CDCSlotOverBudget.WithLabelValues(p).Set(over)
		}
	}
	return cdc
}

// errFenced means another reader appended to the subject: this one is no
// longer the active reader.
var errFenced = errors.New("fenced by another reader")

// errStreamLost means the source subject no longer holds this reader's
// last message: the stream was deleted, replaced or purged (or the message
// aged out). The reader activates again, which looks at the stream.
var errStreamLost = errors.New("the source subject lost this reader's last message")

// streamSeqMargin is how far above the last sequence a reader saved a
// stream created again after a loss starts: more than the pages a reader
// can publish between two position saves (250 ms), so every version
// published before the loss stays below every version published after.
const streamSeqMargin = 1 << 20

// errLeaseLost means this reader could not renew its lease in time (another
// reader may take it over): it stops publishing and stands by.
var errLeaseLost = errors.New("reader lease lost")

// runActive reads and publishes while this reader holds the lease.
func (r *Reader) runActive(parent context.Context, capt capture.Capture, setup capture.Setup, kv jetstream.KeyValue, l *lease) error {
	saved, err := loadPosition(parent, kv, r.cfg.Pipeline, r.side.name)
	if err != nil {
		return err
	}
	pos, note, err := capture.Transition(saved, setup)
	if err != nil {
		return err
	}
	if note != "" {
		r.log.Warn("capture pattern switched", "note", note, "pattern", setup.Pattern)
	}
	// Ensured, not only opened: an operator may have deleted it.
	st, err := r.bus.EnsureStream(parent, natsbus.PipelineStream(r.cfg))
	if err != nil {
		return fmt.Errorf("open stream: %w", jsUnavailable(err))
	}
	if checked, err := r.checkStream(parent, kv, st, saved); err != nil {
		return err
	} else if !equalPos(checked, saved) {
		saved = checked
		if pos, _, err = capture.Transition(saved, setup); err != nil {
			return err
		}
	}
	lastMsg, err := lastOn(parent, st, r.side.subject)
	if err != nil {
		return err
	}
	var last uint64
	var lastBatch *onewayv1.Batch
	if lastMsg != nil {
		last = lastMsg.Sequence
		// Unreadable (another version's batch): the capture then relies on
		// its saved position alone.
		lastBatch, _ = event.Decode(lastMsg.Data)
	}
	if rc, ok := capt.(capture.Recoverer); ok && lastBatch != nil && last > saved.StreamSeq {
		// Pages published after the last save (a crash came between):
		// resume after them rather than read their changes again.
		if moved, ok := rc.Recover(pos, lastBatch); ok {
			r.log.Info("resuming after the last page in the stream, which the saved position did not cover yet",
				"saved_lsn", pos.LSN, "lsn", moved.LSN, "last_stream_seq", last, "saved_stream_seq", saved.StreamSeq)
			pos = moved
		}
	}
	r.log.Info("reader active", "side", r.side.name, "table", r.side.src.Table, "pattern", setup.Pattern, "phase", pos.Phase,
		"watermark", pos.Watermark, "cycle", pos.Cycle, "last_stream_seq", last)

	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		select {
		case <-l.lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	items := make(chan capture.Page, 4)
	emit := func(p capture.Page) error {
		select {
		case items <- p:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var wg sync.WaitGroup
	var prodErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(items)
		if !equalPos(saved, pos) {
			// A first start or a switch: saved before anything is read.
			if prodErr = emit(capture.Page{Next: pos, Save: true}); prodErr != nil {
				return
			}
		}
		prodErr = capt.Run(ctx, pos, lastBatch, emit)
		if prodErr != nil {
			cancel()
		}
	}()
	pubErr := r.publish(ctx, kv, st, last, saved, items)
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
	// A publish failure cancels the producer: report the failure, not the
	// producer's cancellation (which would read as a clean stop).
	for _, err := range []error{pubErr, prodErr} {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// checkStream compares the stream with the saved position. A stream whose
// last sequence is below the one saved lost what this reader published
// (deleted by an operator and created again, or replaced): the changes in
// it that writers had not applied yet are gone, and a writer's ledger,
// which fences on stream sequences, holds versions above what a new
// stream would number from 1. So the reader saves a fresh position (a
// full read of the source, from the start) with a floor above the old
// sequences, then moves the empty stream's sequence above that floor
// (purge up to it) before publishing anything. Each step is safe to
// repeat after a crash. A stream that already holds messages below the
// floor cannot be moved without dropping them: the reader halts.
func (r *Reader) checkStream(ctx context.Context, kv jetstream.KeyValue, st jetstream.Stream, saved Position) (Position, error) {
	info, err := st.Info(ctx)
	if err != nil {
		return saved, fmt.Errorf("read stream info: %w", jsUnavailable(err))
	}
	if saved.StreamSeq <= info.State.LastSeq {
		return saved, nil
	}
	name := bus.StreamName(r.cfg.Pipeline)
	next := saved.StreamSeq + streamSeqMargin
	r.log.Error("the pipeline stream lost what this reader published; reading the source again from the start",
		"stream", name, "stream_last_seq", info.State.LastSeq, "saved_stream_seq", saved.StreamSeq, "next_seq", next,
		"hint", "the stream was deleted or replaced: changes not yet applied by the writers were lost with it, so every row is published again, numbered above every earlier version")
	fresh := Position{StreamSeq: next - 1}
	if err := savePosition(ctx, kv, r.cfg.Pipeline, r.side.name, fresh); err != nil {
		return saved, err
	}
	if info.State.Msgs > 0 {
		return saved, errs.Permanentf("stream %s holds %d messages numbered below %d, the sequence every version must stay above after the stream lost this reader's messages: delete the stream (nats stream rm %s) and start the reader again; it creates the stream numbered from there",
			name, info.State.Msgs, next, name)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(next)); err != nil {
		return saved, fmt.Errorf("move stream %s to sequence %d: %w", name, next, jsUnavailable(err))
	}
	if info, err = st.Info(ctx); err != nil {
		return saved, fmt.Errorf("read stream info: %w", jsUnavailable(err))
	}
	if info.State.LastSeq+1 < next {
		return saved, errs.Permanentf("stream %s did not move to sequence %d (its last is %d)", name, next, info.State.LastSeq)
	}
	return fresh, nil
}

// lastOn is the last message on subject, nil if none.
func lastOn(ctx context.Context, st jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read last message of %s: %w", subject, jsUnavailable(err))
	}
	return m, nil
}

// publishedOn reads back the batches on the reader's subject
// (capture.Published), by direct message gets.
type publishedOn struct {
	js      jetstream.JetStream
	stream  string
	subject string
	st      jetstream.Stream
}

var _ capture.Published = (*publishedOn)(nil)

func (p *publishedOn) open(ctx context.Context) (jetstream.Stream, error) {
	if p.st == nil {
		st, err := p.js.Stream(ctx, p.stream)
		if err != nil {
			return nil, fmt.Errorf("open stream %s: %w", p.stream, jsUnavailable(err))
		}
		p.st = st
	}
	return p.st, nil
}

// LastSeq implements capture.Published.
func (p *publishedOn) LastSeq(ctx context.Context) (uint64, error) {
	st, err := p.open(ctx)
	if err != nil {
		return 0, err
	}
	m, err := lastOn(ctx, st, p.subject)
	if err != nil || m == nil {
		return 0, err
	}
	return m.Sequence, nil
}

// At implements capture.Published.
func (p *publishedOn) At(ctx context.Context, seq uint64) (*onewayv1.Batch, uint64, bool, error) {
	st, err := p.open(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(p.subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("read back %s from sequence %d: %w", p.subject, seq, jsUnavailable(err))
	}
	b, _ := event.Decode(m.Data) // unreadable: another version's batch
	return b, m.Sequence, true, nil
}

func (r *Reader) retryPolicy() retry.Policy {
	return retry.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second, Attempts: 10,
		OnRetry: func(err error, wait time.Duration) {
			r.log.Warn("source read failed; retrying", "error", err, "wait", wait)
		}}
}

// msgID names a page by where it starts and what it holds: a republish
// of the same page after a crash is a duplicate, a page whose content
// changed meanwhile is a new message (harmless: writers fence).
func (r *Reader) msgID(from Position, b *onewayv1.Batch) string {
	content := sha256.New()
	for _, c := range b.GetChanges() {
		content.Write([]byte{byte(c.GetOp())})
		if h := c.GetHash(); len(h) > 0 {
			content.Write(h)
		} else {
			content.Write(c.GetRow())
		}
	}
	// Where the page starts in the source, not in the stream: a republished
	// page follows pages that were duplicates, so the stream sequence its
	// position records differs from the first publish's.
	from.StreamSeq = 0
	fromJSON, _ := json.Marshal(from)
	content.Write(fromJSON)
	return r.cfg.Pipeline + ":" + r.side.name + ":" + hex.EncodeToString(content.Sum(nil)[:16])
}

// publish sends pages in order, one at a time, each retried with its
// Msg-Id until JetStream acknowledges it, so stream order is source order
// (the stream sequence is the version writers fence on). Each publish
// expects last to be the subject's last sequence, so only one reader can
// append. A page's Commit runs once it (and every page before it) is
// acknowledged. The position is saved only after that, at most every 250
// ms, at once for pages that ask, and at the end.
func (r *Reader) publish(ctx context.Context, kv jetstream.KeyValue, st jetstream.Stream, last uint64, pos Position, items <-chan capture.Page) error {
	subject := r.side.subject
	saved := pos
	lastSave := time.Now()
	// high is the stream sequence every saved position records: the last
	// page acknowledged, or the floor a stream loss set.
	high := max(last, pos.StreamSeq)
	save := func(ctx context.Context) error {
		if equalPos(saved, pos) {
			return nil
		}
		if err := savePosition(ctx, kv, r.cfg.Pipeline, r.side.name, pos); err != nil {
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
	// Snapshot pages (a snapshot, the first cycle of a list pattern) are
	// reported as a backfill: rows published by this run, rate and ETA.
	var backfill *progress.Reporter
	defer func() {
		if backfill != nil {
			backfill.Finish()
		}
	}()
	for it := range items {
		if it.Batch != nil {
			data, err := event.Encode(it.Batch)
			if err != nil {
				return errs.Permanent(err)
			}
			if max := r.bus.NC.MaxPayload(); int64(len(data)) > max {
				k := event.Key(it.Batch.GetChanges()[0], event.KeyIndexes(it.Batch))
				return errs.Permanentf("table %s: the row with key %s alone encodes to %d bytes, more than the NATS server's max_payload (%d): raise max_payload or leave large columns out of source.columns",
					r.side.src.Table, k, len(data), max)
			}
			msgID := r.msgID(pos, it.Batch)
			if it.ID != "" {
				msgID = r.cfg.Pipeline + ":" + r.side.name + ":" + it.ID
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
				seq, dup, err = publishFenced(ctx, r.bus.JS, st, subject, data, msgID, last)
				return err
			})
			if err != nil {
				return fmt.Errorf("publish batch to %s: %w", subject, err)
			}
			if dup {
				// A page published before a crash, whose position was not
				// saved: JetStream recognised its Msg-Id.
				r.log.Info("batch already in the stream; not stored again", "msg_id", msgID, "rows", len(it.Batch.GetChanges()))
			}
			last = seq
			high = max(high, seq)
			r.lastSeq.Store(seq)
			if it.Batch.GetPattern() == onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT {
				if backfill == nil {
					backfill = progress.New(progress.Options{Work: "snapshot", Unit: "rows", Total: r.tableEstimate.Load(),
						Log: r.log, Attrs: []any{"table", r.cfg.Source.Table}})
				}
				backfill.Add(int64(len(it.Batch.GetChanges())))
			} else if backfill != nil {
				backfill.Finish()
				backfill = nil
			}
			if r.metrics != nil {
				r.metrics.EventsProcessed.WithLabelValues(r.side.service, r.cfg.Pipeline, "published").Add(float64(len(it.Batch.GetChanges())))
			}
		}
		if it.Commit != nil {
			err := retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second,
				OnRetry: func(err error, wait time.Duration) {
					r.log.Warn("storing capture state failed; retrying", "error", err, "wait", wait)
				}}, it.Commit)
			if err != nil {
				return fmt.Errorf("store capture state: %w", err)
			}
		}
		pos = it.Next
		pos.StreamSeq = high
		if it.CaughtUp || it.Save {
			if err := save(ctx); err != nil {
				return err
			}
			if it.CaughtUp && r.OnCaughtUp != nil {
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

func loadPosition(ctx context.Context, kv jetstream.KeyValue, pipeline, side string) (Position, error) {
	var pos Position
	e, err := kv.Get(ctx, bus.ReaderPositionKey(pipeline, side))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return pos, nil
	}
	if err != nil {
		return pos, fmt.Errorf("load reader position: %w", jsUnavailable(err))
	}
	if err := json.Unmarshal(e.Value(), &pos); err != nil {
		return pos, errs.Permanentf("reader position in %s is corrupt (%v); delete key %s to start over",
			bus.StateBucket, err, bus.ReaderPositionKey(pipeline, side))
	}
	return pos, nil
}

func savePosition(ctx context.Context, kv jetstream.KeyValue, pipeline, side string, pos Position) error {
	data, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, bus.ReaderPositionKey(pipeline, side), data); err != nil {
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
		if errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return 0, false, errs.Permanent(fmt.Errorf("%w: subject %s holds no message, this reader expected %d", errStreamLost, subject, last))
		}
		if gerr != nil {
			return 0, false, errs.Unavailable(fmt.Errorf("resolve refused publish: %w", gerr))
		}
		if m.Header.Get(jetstream.MsgIDHeader) == msgID {
			return m.Sequence, false, nil
		}
		if m.Sequence < last {
			return 0, false, errs.Permanent(fmt.Errorf("%w: subject %s is at sequence %d, below the %d this reader expected", errStreamLost, subject, m.Sequence, last))
		}
		return 0, false, errs.Permanent(fmt.Errorf("%w: subject %s is at sequence %d, this reader expected %d", errFenced, subject, m.Sequence, last))
	}
	if _, serr := st.Info(pctx); errors.Is(serr, jetstream.ErrStreamNotFound) {
		return 0, false, errs.Permanent(fmt.Errorf("%w: publish to %s: %w (stream deleted)", errStreamLost, subject, err))
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
