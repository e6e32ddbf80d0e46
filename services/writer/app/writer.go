// Package app is the writer service: N workers share one durable consumer
// per target and apply change batches to the target, effect-once.
// integration/ and `oneway up` run it in-process through New and Run.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/httptarget"
	"github.com/oneway-sync/oneway/services/writer/internal/jsonltarget"
	"github.com/oneway-sync/oneway/services/writer/internal/kafkatarget"
	"github.com/oneway-sync/oneway/services/writer/internal/mysqltarget"
	"github.com/oneway-sync/oneway/services/writer/internal/natstarget"
	"github.com/oneway-sync/oneway/services/writer/internal/pgtarget"
	"github.com/oneway-sync/oneway/services/writer/internal/sqlitetarget"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/kafkaconn"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Writer applies one target's changes.
type Writer struct {
	cfg     *config.Pipeline
	target  config.Target
	bus     *natsbus.Bus
	log     *slog.Logger
	metrics *telemetry.Metrics

	// OnReady, when set before Run, is called once the consumer is bound.
	OnReady func()
}

// New returns a writer for the named target of cfg. metrics may be nil.
func New(cfg *config.Pipeline, target string, b *natsbus.Bus, log *slog.Logger, metrics *telemetry.Metrics) (*Writer, error) {
	t, ok := cfg.Target(target)
	if !ok {
		return nil, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, target)
	}
	return &Writer{cfg: cfg, target: *t, bus: b, metrics: metrics,
		log: log.With("component", "writer", "target", t.Name)}, nil
}

// Name implements runner.Component.
func (w *Writer) Name() string { return "writer-" + w.target.Name }

// ConsumerSpec is the durable consumer the writers of a target share. It
// receives the pipeline's changes (in staged mode, the differ's pushes to
// the target instead of the source's changes) and the target's re-driven
// dead letters (`oneway dlq retry`).
func ConsumerSpec(cfg *config.Pipeline, t config.Target) natsbus.ConsumerSpec {
	return natsbus.ConsumerSpec{
		Stream:         bus.StreamName(cfg.Pipeline),
		Durable:        bus.WriterConsumer(cfg.Pipeline, t.Name),
		FilterSubjects: []string{ChangesSubject(cfg, t.Name), bus.RetrySubject(cfg.Pipeline, t.Name)},
		AckWait:        t.Writer.AckWait.Duration,
		MaxAckPending:  max(t.Writer.Workers*t.Writer.FetchBatch*2, 64),
	}
}

// ChangesSubject is the subject a target's writers apply: the source's in
// direct mode, the target's push subject in staged mode.
func ChangesSubject(cfg *config.Pipeline, target string) string {
	if cfg.Staged() {
		return bus.PushSubject(cfg.Pipeline, target)
	}
	return bus.SourceSubject(cfg.Pipeline)
}

// openTarget connects to the target of the configured kind. close releases
// its connections.
func (w *Writer) openTarget(ctx context.Context) (tgt target.Writer, close func(), err error) {
	app := "oneway-writer-" + w.cfg.Pipeline + "-" + w.target.Name
	conns := int32(w.target.Writer.Workers + 1)
	// Kinds that cannot compare versions keep their ledger in a PostgreSQL
	// database of their own; the others in the target.
	ledgerURL := w.target.LedgerURL.Value()
	if w.target.Kind == config.KindPostgres {
		ledgerURL = w.target.URL.Value()
	}
	var pool *pgxpool.Pool
	if ledgerURL != "" {
		if pool, err = pgconn.Open(ctx, ledgerURL, app, conns); err != nil {
			return nil, nil, err
		}
	}
	closePool := func() {
		if pool != nil {
			pool.Close()
		}
	}
	tgt, closeTarget, err := w.newTarget(ctx, pool)
	if err != nil {
		closePool()
		return nil, nil, err
	}
	return tgt, func() { closeTarget(); closePool() }, nil
}

// pgSpec is the spec of a PostgreSQL target.
func (w *Writer) pgSpec() (pgtarget.Spec, error) {
	t := w.target
	schema, table, err := config.SplitTable(t.Table)
	if err != nil {
		return pgtarget.Spec{}, errs.Permanent(fmt.Errorf("target %s table: %w", t.Name, err))
	}
	return pgtarget.Spec{
		Pipeline: w.cfg.Pipeline, Target: t.Name,
		Table: pgconn.Table{Schema: schema, Name: table}, CreateTable: t.CreatesTable(),
		Delete: pgtarget.DeletePolicy(t.Delete), SoftDeleteColumn: t.SoftDeleteColumn,
		LedgerSchema: t.LedgerSchema, Staged: w.cfg.Staged(),
	}, nil
}

// newTarget opens the configured kind of target; pool is its ledger
// database (the target itself for postgres, nil for sqlite).
func (w *Writer) newTarget(ctx context.Context, pool *pgxpool.Pool) (target.Writer, func(), error) {
	noop := func() {}
	t := w.target
	switch t.Kind {
	case config.KindPostgres:
		spec, err := w.pgSpec()
		if err != nil {
			return nil, nil, err
		}
		tg, err := pgtarget.Open(ctx, pool, spec, w.log)
		return tg, noop, err
	case config.KindSQLite:
		tg, err := sqlitetarget.Open(ctx, sqlitetarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, Path: t.URL.Value(),
			Table: sqliteTable(t.Table), CreateTable: t.CreatesTable(),
			Delete: t.Delete, SoftDeleteColumn: t.SoftDeleteColumn, Staged: w.cfg.Staged(),
		}, w.log)
		if err != nil {
			return nil, nil, err
		}
		return tg, func() { _ = tg.Close() }, nil
	case config.KindMySQL:
		database, table, err := config.SplitMySQLTable(t.Table)
		if err != nil {
			return nil, nil, errs.Permanent(fmt.Errorf("target %s: table: %w", t.Name, err))
		}
		tg, err := mysqltarget.Open(ctx, mysqltarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, DSN: t.URL.Value(),
			Database: database, Table: table, CreateTable: t.CreatesTable(),
			Delete: t.Delete, SoftDeleteColumn: t.SoftDeleteColumn,
			MaxConns: t.Writer.Workers + 1,
		}, w.log)
		if err != nil {
			return nil, nil, err
		}
		return tg, func() { _ = tg.Close() }, nil
	case config.KindHTTP:
		h := t.HTTP
		headers := make(map[string]string, len(h.Headers))
		for _, hd := range h.Headers {
			headers[hd.Name] = hd.Value.Value()
		}
		deleteMethod := h.DeleteMethod
		if t.Delete == "none" {
			deleteMethod = httptarget.DeleteNone
		}
		tg, err := httptarget.Open(ctx, httptarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, URL: t.URL.Value(),
			UpsertMethod: h.UpsertMethod, DeleteMethod: deleteMethod, Headers: headers,
			Timeout: h.Timeout.Duration, MaxAttempts: h.MaxAttempts, RateLimit: float64(h.RateLimit),
			Concurrency: h.Concurrency, Ledger: pool, LedgerSchema: t.LedgerSchema,
		}, w.log)
		return tg, noop, err
	case config.KindKafka:
		var brokers []string
		for _, b := range strings.Split(t.URL.Value(), ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		tr, err := kafkaconn.Transport(t.Kafka.KafkaAuth, "oneway-writer-"+w.cfg.Pipeline+"-"+t.Name, 10*time.Second)
		if err != nil {
			return nil, nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		tg, err := kafkatarget.Open(ctx, kafkatarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, Brokers: brokers, Topic: t.Kafka.Topic,
			Transport: tr, Ledger: pool, LedgerSchema: t.LedgerSchema,
		}, w.log)
		if err != nil {
			tr.CloseIdleConnections()
			return nil, nil, err
		}
		return tg, func() { _ = tg.Close(); tr.CloseIdleConnections() }, nil
	case config.KindJSONL:
		tg, err := jsonltarget.Open(ctx, jsonltarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, Path: t.URL.Value(),
			Ledger: pool, LedgerSchema: t.LedgerSchema,
		}, w.log)
		return tg, noop, err
	case config.KindNATS:
		tg, err := natstarget.Open(ctx, natstarget.Spec{
			Pipeline: w.cfg.Pipeline, Target: t.Name, URL: t.URL.Value(),
			Subject: t.NATS.Subject, JetStream: t.NATS.JetStream, Options: natsbus.AuthOptions(t.NATS.NATSAuth),
			Ledger: pool, LedgerSchema: t.LedgerSchema,
		}, w.log)
		if err != nil {
			return nil, nil, err
		}
		return tg, func() { _ = tg.Close() }, nil
	default:
		return nil, nil, errs.Permanentf("target %s: unsupported kind %q", t.Name, t.Kind)
	}
}

// sqliteTable drops a "public." schema (SQLite has none): a pipeline whose
// target table defaults to the source's "public.invoices" writes "invoices".
func sqliteTable(name string) string {
	if _, table, err := config.SplitTable(name); err == nil {
		return table
	}
	return name
}

// Run consumes until ctx ends, then finishes in-flight batches and returns.
func (w *Writer) Run(ctx context.Context) error {
	var tgt target.Writer
	var closeTarget func()
	err := retry.Do(ctx, retry.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second, Attempts: 10,
		OnRetry: func(err error, wait time.Duration) {
			w.log.Warn("target not ready; retrying", "error", err, "wait", wait)
		}},
		func(ctx context.Context) error {
			var err error
			tgt, closeTarget, err = w.openTarget(ctx)
			return err
		})
	if err != nil {
		return fmt.Errorf("open target %s: %w", w.target.Name, err)
	}
	defer closeTarget()
	if r, ok := tgt.(target.Reporter); w.cfg.Staged() && (!ok || !r.Reports()) {
		return errs.Permanentf("target %s (%s) cannot report what it applied, which staged mode needs", w.target.Name, w.target.Kind)
	}
	if _, err := w.bus.EnsureStream(ctx, natsbus.PipelineStream(w.cfg)); err != nil {
		return err
	}
	cons, err := w.bus.EnsureConsumer(ctx, ConsumerSpec(w.cfg, w.target))
	if err != nil {
		return err
	}
	if w.OnReady != nil {
		w.OnReady()
	}
	w.log.Info("writer consuming", "consumer", bus.WriterConsumer(w.cfg.Pipeline, w.target.Name), "workers", w.target.Writer.Workers)
	h := &handler{w: w, tgt: tgt, retrySubject: bus.RetrySubject(w.cfg.Pipeline, w.target.Name),
		changesSubject: ChangesSubject(w.cfg, w.target.Name)}
	if w.cfg.Staged() {
		h.appliedSubject = bus.AppliedSubject(w.cfg.Pipeline, w.target.Name)
	}
	return w.bus.ConsumeBatches(ctx, cons, h.handle, natsbus.ConsumeOptions{
		Workers: w.target.Writer.Workers, FetchBatch: w.target.Writer.FetchBatch,
		MaxAttempts: w.target.Writer.MaxAttempts, AckWait: w.target.Writer.AckWait.Duration,
		DeadLetterSubject: bus.DLQSubject(w.cfg.Pipeline, w.target.Name),
		Headers:           map[string]string{bus.HeaderPipeline: w.cfg.Pipeline, bus.HeaderTarget: w.target.Name},
		Log:               w.log,
		Recreate: func(ctx context.Context) (jetstream.Consumer, error) {
			return w.bus.EnsureConsumer(ctx, ConsumerSpec(w.cfg, w.target))
		},
		OnOutcome: func(o natsbus.Outcome) {
			if o == natsbus.OutcomeDeadLetter && w.metrics != nil {
				w.metrics.DeadLetters.WithLabelValues(w.cfg.Pipeline, w.target.Name).Inc()
			}
		},
	})
}

type handler struct {
	w            *Writer
	tgt          target.Writer
	retrySubject string
	// changesSubject is what the writer applies (source or push); a retry
	// names it as its original subject.
	changesSubject string
	// appliedSubject receives the applied reports in staged mode ("" in
	// direct mode).
	appliedSubject string
}

// handle applies a group of messages in one target transaction (several
// when the group mixes column layouts, e.g. across a schema change). An
// outage of the target is waited out here, with backoff, while the consume
// loop keeps the messages in progress: it does not spend their delivery
// budget. Any error makes the loop retry each message alone.
//
// A message on the target's retry subject is a re-driven dead letter: it is
// applied with the stream sequence of its original message (header
// Oneway-Original-Sequence), so the ledger fences it exactly as the
// original: when its key got a newer change meanwhile, it is skipped.
func (h *handler) handle(ctx context.Context, msgs []jetstream.Msg) error {
	err := h.handleGroup(ctx, msgs)
	if err != nil && len(msgs) == 1 && msgs[0].Subject() == h.retrySubject {
		return h.retryFailed(ctx, msgs[0], err)
	}
	return err
}

func (h *handler) handleGroup(ctx context.Context, msgs []jetstream.Msg) error {
	w := h.w
	items := make([]target.Item, 0, len(msgs))
	metas := make([]*jetstream.MsgMetadata, 0, len(msgs))
	for _, msg := range msgs {
		meta, err := msg.Metadata()
		if err != nil {
			return errs.Permanent(err)
		}
		seq := meta.Sequence.Stream
		if msg.Subject() == h.retrySubject {
			if seq, err = h.originalSequence(msg, meta); err != nil {
				return err
			}
		}
		b, err := event.Decode(msg.Data())
		if err != nil {
			return fmt.Errorf("pipeline %s stream seq %d: %w", w.cfg.Pipeline, meta.Sequence.Stream, err)
		}
		if b.GetPipeline() != w.cfg.Pipeline {
			return errs.Permanentf("stream seq %d: batch of pipeline %q on pipeline %q's subject", meta.Sequence.Stream, b.GetPipeline(), w.cfg.Pipeline)
		}
		items = append(items, target.Item{Seq: seq, Batch: b})
		metas = append(metas, meta)
	}
	for start := 0; start < len(items); {
		end := start + 1
		for end < len(items) && target.SameLayout(items[start].Batch, items[end].Batch) {
			end++
		}
		if err := h.apply(ctx, items[start:end], metas[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// originalSequence is the stream sequence a retried message was first
// published at. A retry without a valid one cannot be fenced: permanent.
func (h *handler) originalSequence(msg jetstream.Msg, meta *jetstream.MsgMetadata) (uint64, error) {
	hdr := msg.Headers()
	// The source's and the target's push subject: both carry changes
	// versioned by their stream sequence (a pipeline may have switched
	// modes since the change was dead-lettered).
	if subj := hdr.Get(bus.HeaderSubject); subj != "" && subj != bus.SourceSubject(h.w.cfg.Pipeline) &&
		subj != bus.PushSubject(h.w.cfg.Pipeline, h.w.target.Name) {
		return 0, errs.Permanentf("retry stream seq %d: original subject %q is neither the pipeline's source subject nor the target's push subject", meta.Sequence.Stream, subj)
	}
	raw := hdr.Get(bus.HeaderSequence)
	seq, err := strconv.ParseUint(raw, 10, 64)
	switch {
	case raw == "":
		return 0, errs.Permanentf("retry stream seq %d: no %s header: its original version is unknown", meta.Sequence.Stream, bus.HeaderSequence)
	case err != nil || seq == 0:
		return 0, errs.Permanentf("retry stream seq %d: invalid %s header %q", meta.Sequence.Stream, bus.HeaderSequence, raw)
	case seq >= meta.Sequence.Stream:
		// A retry is always published after its original: a later sequence
		// would apply an old change with a newer version.
		return 0, errs.Permanentf("retry stream seq %d: %s %d is not earlier than the retry itself", meta.Sequence.Stream, bus.HeaderSequence, seq)
	}
	return seq, nil
}

// retryFailed handles a failure of a retry message handled alone. When the
// message is to be dead-lettered (a permanent error, or its last attempt),
// the writer does it here rather than the consume loop: the loop would name
// the retry message's own subject and sequence, and the dead letter must
// keep the original ones, so that a later retry still carries the original
// version. The message is then acked.
func (h *handler) retryFailed(ctx context.Context, msg jetstream.Msg, cause error) error {
	w := h.w
	if ctx.Err() != nil && !errs.IsPermanent(cause) {
		return cause // shutting down: redelivered later
	}
	meta, err := msg.Metadata()
	if err != nil {
		return cause
	}
	maxAttempts := w.target.Writer.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = 5
	}
	if !errs.IsPermanent(cause) && meta.NumDelivered < uint64(maxAttempts) {
		return cause // redelivered with backoff
	}
	orig, err := h.originalSequence(msg, meta)
	if err != nil {
		return cause // no original version to keep: the loop dead-letters it as it is
	}
	if err := h.publishDeadLetter(ctx, msg.Data(), cause, meta, orig, msg.Headers().Get(bus.HeaderKey)); err != nil {
		w.log.Error("dead-letter publish of a retry failed", "stream_seq", meta.Sequence.Stream, "error", err)
		return cause
	}
	w.log.Error("retried message dead-lettered again", "stream_seq", meta.Sequence.Stream, "original_seq", orig, "attempts", meta.NumDelivered, "error", cause)
	if w.metrics != nil {
		w.metrics.DeadLetters.WithLabelValues(w.cfg.Pipeline, w.target.Name).Inc()
	}
	return nil
}

func (h *handler) apply(ctx context.Context, items []target.Item, metas []*jetstream.MsgMetadata) error {
	w := h.w
	start := time.Now()
	var res target.Result
	err := retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Attempts: 3,
		OnRetry: func(err error, wait time.Duration) {
			w.log.Warn("apply failed; retrying", "first_stream_seq", items[0].Seq, "messages", len(items), "error", err, "wait", wait)
		}}, func(ctx context.Context) error {
		var err error
		res, err = h.tgt.Apply(ctx, items)
		return err
	})
	if err != nil {
		return err
	}
	for _, f := range res.Failed {
		if err := h.deadLetter(ctx, metas[f.Item], items[f.Item], f); err != nil {
			return err // redelivered; the applied part is fenced by the ledger
		}
	}
	if h.appliedSubject != "" {
		if err := h.report(ctx, items, res.Applied); err != nil {
			// Redelivered, and then fenced: this report is lost, and the
			// differ's next scan pushes the keys again (a push that meets
			// its own content writes nothing, and is reported).
			return err
		}
	}
	if m := w.metrics; m != nil {
		m.EventsProcessed.WithLabelValues("writer", w.cfg.Pipeline, "applied").Add(float64(res.Written + res.Deleted))
		m.EventsProcessed.WithLabelValues("writer", w.cfg.Pipeline, "skipped").Add(float64(res.Changes - res.Written - res.Deleted - len(res.Failed)))
		m.OperationDuration.WithLabelValues("writer_apply").Observe(time.Since(start).Seconds())
		last := items[len(items)-1].Batch.GetChanges()
		if n := len(last); n > 0 {
			lag := time.Since(time.Unix(0, last[n-1].GetCapturedAtUnixNano())).Seconds()
			m.EndToEndLag.WithLabelValues(w.cfg.Pipeline, w.target.Name).Set(lag)
		}
	}
	return nil
}

// deadLetter publishes one rejected change as a batch of its own, with
// headers naming pipeline, target, key and cause, and the subject and
// sequence of its original message (for a retried change, the original's,
// not the retry's).
func (h *handler) deadLetter(ctx context.Context, meta *jetstream.MsgMetadata, it target.Item, f target.Failure) error {
	w := h.w
	b := it.Batch
	one := &onewayv1.Batch{SchemaVersion: b.GetSchemaVersion(), Pipeline: b.GetPipeline(), Origin: b.GetOrigin(),
		Pattern: b.GetPattern(), Table: b.GetTable(), Columns: b.GetColumns(), Changes: []*onewayv1.Change{b.GetChanges()[f.Index]}}
	data, err := event.Encode(one)
	if err != nil {
		return err
	}
	w.log.Error("change rejected by the target; dead-lettered", "table", b.GetTable(), "key", f.Key, "stream_seq", meta.Sequence.Stream, "original_seq", it.Seq, "error", f.Err)
	if w.metrics != nil {
		w.metrics.DeadLetters.WithLabelValues(w.cfg.Pipeline, w.target.Name).Inc()
		w.metrics.EventsProcessed.WithLabelValues("writer", w.cfg.Pipeline, "dead_lettered").Inc()
	}
	return h.publishDeadLetter(ctx, data, f.Err, meta, it.Seq, f.Key)
}

// publishDeadLetter publishes data to the target's DLQ subject. orig is the
// original stream sequence of the change(s); meta is the delivery that
// failed (a retry message's own when orig differs from its sequence).
func (h *handler) publishDeadLetter(ctx context.Context, data []byte, cause error, meta *jetstream.MsgMetadata, orig uint64, key string) error {
	w := h.w
	subject := bus.DLQSubject(w.cfg.Pipeline, w.target.Name)
	headers := map[string]string{
		bus.HeaderPipeline: w.cfg.Pipeline, bus.HeaderTarget: w.target.Name,
		bus.HeaderAttempts: strconv.FormatUint(meta.NumDelivered, 10),
		bus.HeaderSubject:  h.changesSubject, bus.HeaderSequence: strconv.FormatUint(orig, 10),
	}
	if key != "" {
		headers[bus.HeaderKey] = key
	}
	if orig == meta.Sequence.Stream {
		return w.bus.DeadLetter(ctx, subject, data, cause, headers)
	}
	// A retried change failing again: the Msg-Id of bus.DeadLetter would
	// equal its first dead letter's, deleted by the retry, and the stream's
	// duplicate window would silently drop this one. Name the retry message
	// in the id instead (a redelivery of it is still a duplicate).
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(bus.HeaderError, event.SanitizeHeader(cause.Error()))
	for k, v := range headers {
		m.Header.Set(k, event.SanitizeHeader(v))
	}
	id := fmt.Sprintf("dlq:%s:%d:%s:retry:%d", subject, orig, key, meta.Sequence.Stream)
	_, err := w.bus.PublishMsg(ctx, m, id)
	return err
}
