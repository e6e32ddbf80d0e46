// Package status gathers what an operator wants to see of a running
// pipeline — the reader's position, each target's backlog, lag, dead
// letters, throughput over time and last error — from JetStream and the
// process's metrics, and serves it as JSON and as a live page.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Snapshot is a pipeline's status at one moment. It is the JSON of
// /status.json and of `oneway status --json`.
type Snapshot struct {
	Pipeline string    `json:"pipeline"`
	Time     time.Time `json:"time"`
	Stream   Stream    `json:"stream"`
	Reader   Reader    `json:"reader"`
	Targets  []Target  `json:"targets"`
	// RowsPerSecond is the rate of rows applied to all targets, sampled
	// every Interval; History keeps the last HistoryLen samples.
	RowsPerSecond float64 `json:"rows_per_second"`
	History       []Point `json:"history"`
	// Comparison is both sides counted directly, when the pipeline has a
	// cheap way to (the demo's two small files); absent otherwise.
	Comparison *Comparison `json:"comparison,omitempty"`
}

// Comparison is the source and one target read and compared directly.
type Comparison struct {
	SourceRows int64  `json:"source_rows"`
	Target     string `json:"target"`
	TargetRows int64  `json:"target_rows"`
	// OutOfStep counts keys missing from the target, extra in it, or with
	// an owned value that differs.
	OutOfStep int64 `json:"out_of_step"`
	// Error is why the comparison failed this time ("" when it did not).
	Error string `json:"error,omitempty"`
}

// Stream is the pipeline's JetStream stream.
type Stream struct {
	Name     string `json:"name"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	LastSeq  uint64 `json:"last_seq"`
}

// Reader is the source side's reader.
type Reader struct {
	// Phase is "snapshot", "watermark" (or another pattern's phase), or ""
	// before the first position was saved.
	Phase string `json:"phase"`
	// Position is the saved position, as the reader stores it.
	Position json.RawMessage `json:"position,omitempty"`
	// Active is true while a reader renews the lease; Holder names it.
	Active bool   `json:"active"`
	Holder string `json:"holder,omitempty"`
}

// leaseFresh is how recently a lease must have been renewed for its reader
// to count as active (readers renew every 2 s; the lease lasts 6 s).
const leaseFresh = 6 * time.Second

// Target is one target's delivery status.
type Target struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Pending counts messages not yet delivered plus delivered and not yet
	// acknowledged; LagMessages is the same number.
	LagMessages uint64 `json:"lag_messages"`
	// LagSeconds is the age of the oldest message not yet acknowledged (0
	// when nothing is pending).
	LagSeconds float64 `json:"lag_seconds"`
	// AppliedSeq is the consumer's ack floor: every message up to it is done.
	AppliedSeq  uint64 `json:"applied_seq"`
	DeadLetters uint64 `json:"dead_letters"`
	// MessagesPerSecond is the rate the ack floor advanced over the last
	// sample interval.
	MessagesPerSecond float64   `json:"messages_per_second"`
	LastError         string    `json:"last_error,omitempty"`
	LastErrorAt       time.Time `json:"last_error_at,omitzero"`
}

// Point is one throughput sample.
type Point struct {
	Time          time.Time          `json:"t"`
	RowsPerSecond float64            `json:"rows_per_second"`
	Targets       map[string]float64 `json:"targets"` // messages per second by target
}

const (
	// Interval between throughput samples.
	Interval = 2 * time.Second
	// HistoryLen samples are kept: 10 minutes.
	HistoryLen = 300
)

// Collector builds snapshots. Run samples throughput in the background;
// Collect may be called concurrently from HTTP handlers.
type Collector struct {
	bus     *natsbus.Bus
	cfg     *config.Pipeline
	metrics *telemetry.Metrics
	errs    *ErrorLog

	// Compare, when set before Run, compares the two sides directly at
	// every Collect (see Snapshot.Comparison). It is called from concurrent
	// HTTP handlers: it must be safe for concurrent use, and quick.
	Compare func(ctx context.Context) (Comparison, error)

	mu       sync.Mutex
	history  []Point
	lastRows float64
	lastSeq  map[string]uint64
	lastAt   time.Time
}

// NewCollector returns a collector of cfg's pipeline. metrics (the rows
// applied) and errs (last errors) may be nil.
func NewCollector(b *natsbus.Bus, cfg *config.Pipeline, metrics *telemetry.Metrics, errs *ErrorLog) *Collector {
	return &Collector{bus: b, cfg: cfg, metrics: metrics, errs: errs, lastSeq: map[string]uint64{}}
}

// Name implements runner.Component.
func (c *Collector) Name() string { return "status" }

// Run samples throughput every Interval until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		c.sample(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (c *Collector) sample(ctx context.Context) {
	now := time.Now()
	rows := c.appliedRows()
	seqs := map[string]uint64{}
	for _, t := range c.cfg.Targets {
		if ci, err := c.consumerInfo(ctx, t.Name); err == nil {
			seqs[t.Name] = ci.AckFloor.Stream
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.lastAt.IsZero() {
		dt := now.Sub(c.lastAt).Seconds()
		p := Point{Time: now, RowsPerSecond: max(0, rows-c.lastRows) / dt, Targets: map[string]float64{}}
		for name, seq := range seqs {
			if prev, ok := c.lastSeq[name]; ok && seq >= prev {
				p.Targets[name] = float64(seq-prev) / dt
			}
		}
		c.history = append(c.history, p)
		if len(c.history) > HistoryLen {
			c.history = c.history[len(c.history)-HistoryLen:]
		}
	}
	c.lastAt, c.lastRows, c.lastSeq = now, rows, seqs
}

// appliedRows reads the writers' applied-rows counter of this process.
func (c *Collector) appliedRows() float64 {
	if c.metrics == nil {
		return 0
	}
	var m dto.Metric
	if err := c.metrics.EventsProcessed.WithLabelValues("writer", c.cfg.Pipeline, "applied").Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func (c *Collector) consumerInfo(ctx context.Context, target string) (*jetstream.ConsumerInfo, error) {
	cons, err := c.bus.JS.Consumer(ctx, bus.StreamName(c.cfg.Pipeline), bus.WriterConsumer(c.cfg.Pipeline, target))
	if err != nil {
		return nil, err
	}
	return cons.Info(ctx)
}

// Collect builds a snapshot now. A target whose consumer does not exist yet
// shows everything in the stream as pending.
func (c *Collector) Collect(ctx context.Context) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := Snapshot{Pipeline: c.cfg.Pipeline, Time: time.Now().UTC(), Targets: []Target{}}
	st, err := c.bus.JS.Stream(ctx, bus.StreamName(c.cfg.Pipeline))
	if err != nil {
		return s, fmt.Errorf("status of stream %s: %w", bus.StreamName(c.cfg.Pipeline), err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.DLQSubjects(c.cfg.Pipeline)))
	if err != nil {
		return s, fmt.Errorf("status of stream %s: %w", bus.StreamName(c.cfg.Pipeline), err)
	}
	s.Stream = Stream{Name: info.Config.Name, Messages: info.State.Msgs, Bytes: info.State.Bytes, LastSeq: info.State.LastSeq}
	s.Reader = c.reader(ctx)

	c.mu.Lock()
	s.History = append([]Point(nil), c.history...)
	if n := len(c.history); n > 0 {
		s.RowsPerSecond = c.history[n-1].RowsPerSecond
	}
	c.mu.Unlock()

	for _, t := range c.cfg.Targets {
		ts := Target{Name: t.Name, Kind: t.Kind, DeadLetters: info.State.Subjects[bus.DLQSubject(c.cfg.Pipeline, t.Name)]}
		if n := len(s.History); n > 0 {
			ts.MessagesPerSecond = s.History[n-1].Targets[t.Name]
		}
		ci, err := c.consumerInfo(ctx, t.Name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			ts.LagMessages = info.State.LastSeq
		case err != nil:
			return s, fmt.Errorf("status of target %s: %w", t.Name, err)
		default:
			ts.AppliedSeq = ci.AckFloor.Stream
			ts.LagMessages = ci.NumPending + uint64(ci.NumAckPending)
			if ts.LagMessages > 0 {
				ts.LagSeconds = c.age(ctx, st, ci.AckFloor.Stream+1, info.State.LastSeq)
			}
		}
		if c.errs != nil {
			if e, ok := c.errs.Last(t.Name); ok {
				ts.LastError, ts.LastErrorAt = e.Message, e.Time
			}
		}
		s.Targets = append(s.Targets, ts)
	}
	if c.Compare != nil {
		cmp, err := c.Compare(ctx)
		if err != nil {
			cmp.Error = err.Error()
		}
		s.Comparison = &cmp
	}
	return s, nil
}

// age is how long ago the first message at or after seq was stored. The
// consumer's filter skips other subjects, so it looks a few messages ahead.
func (c *Collector) age(ctx context.Context, st jetstream.Stream, seq, last uint64) float64 {
	for ; seq <= last; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0
		}
		return max(0, time.Since(m.Time).Seconds())
	}
	return 0
}

func (c *Collector) reader(ctx context.Context) Reader {
	var r Reader
	kv, err := c.bus.JS.KeyValue(ctx, bus.StateBucket)
	if err != nil {
		return r
	}
	if e, err := kv.Get(ctx, bus.ReaderPositionKey(c.cfg.Pipeline, "source")); err == nil {
		r.Position = json.RawMessage(e.Value())
		var p struct {
			Phase string `json:"phase"`
		}
		_ = json.Unmarshal(e.Value(), &p)
		r.Phase = p.Phase
	}
	if e, err := kv.Get(ctx, bus.ReaderLeaseKey(c.cfg.Pipeline, "source")); err == nil {
		var l struct {
			Holder  string    `json:"holder"`
			Renewed time.Time `json:"renewed"`
		}
		if json.Unmarshal(e.Value(), &l) == nil && time.Since(l.Renewed) < leaseFresh {
			r.Active, r.Holder = true, l.Holder
		}
	}
	return r
}

// ErrorLog is a slog.Handler wrapper that remembers the last warning or
// error logged with a "target" attribute, per target. Safe for concurrent
// use.
type ErrorLog struct {
	mu   sync.Mutex
	last map[string]LastError
}

// LastError is one remembered record.
type LastError struct {
	Message string
	Time    time.Time
}

// NewErrorLog returns an empty log.
func NewErrorLog() *ErrorLog { return &ErrorLog{last: map[string]LastError{}} }

// Last returns the last error recorded for target.
func (l *ErrorLog) Last(target string) (LastError, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.last[target]
	return e, ok
}

// Wrap returns a handler that records into l and passes every record on to h.
func (l *ErrorLog) Wrap(h slog.Handler) slog.Handler { return &errorHandler{log: l, next: h} }

type errorHandler struct {
	log    *ErrorLog
	next   slog.Handler
	target string // from WithAttrs
}

func (h *errorHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn || h.next.Enabled(ctx, level)
}

func (h *errorHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		target, cause := h.target, ""
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "target":
				target = a.Value.String()
			case "error":
				cause = a.Value.String()
			}
			return true
		})
		if target != "" {
			msg := r.Message
			if cause != "" {
				msg += ": " + cause
			}
			h.log.mu.Lock()
			h.log.last[target] = LastError{Message: msg, Time: r.Time}
			h.log.mu.Unlock()
		}
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *errorHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	target := h.target
	for _, a := range attrs {
		if a.Key == "target" {
			target = a.Value.String()
		}
	}
	return &errorHandler{log: h.log, next: h.next.WithAttrs(attrs), target: target}
}

func (h *errorHandler) WithGroup(name string) slog.Handler {
	return &errorHandler{log: h.log, next: h.next.WithGroup(name), target: h.target}
}
