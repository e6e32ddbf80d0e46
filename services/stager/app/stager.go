// Package app is the stager of staged push: it stages what the source, the
// targets' read-backs and the writers' applied reports say into the stage
// store, and hands the keys it touched to the differ. integration/ and
// `oneway up` run it in-process through New and Run.
//
// Versions. A record staged from the source or from a target's read-back
// gets the version of its change in the stream it came on, seq<<20 | index
// (event.Version), as the writers fence. A record from a writer's applied
// report gets the version the writer applied it at, which the report
// carries in Change.version: the push message's own version. All of these
// are positions in the one stream of the pipeline, so on a target side the
// later of a read-back and an applied report wins, and the store's version
// guard keeps a redelivered or late message from going back in time.
//
// Applied reports. A writer's report is staged with ApplyReports, which
// also raises, in the same transaction, the push log's Reported of the key:
// the differ's proof that the push was applied, even when a read-back
// published after the push is staged above the report (the version guard
// keeps the read-back). The keys whose push a report so confirmed under a
// newer record are handed on to the differ even from a quiet report: it
// may have set them aside while their push was in flight.
//
// Effect once. A message is acked only after its records are committed
// (one transaction per side for a group of messages) and its keys are
// published on the staged subject, with a Msg-Id derived from the message's
// stream sequence: a redelivery re-applies as a no-op (same versions) and
// republishes as a duplicate.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Consumer settings. A group of up to fetchBatch messages of one side is
// staged in one transaction (one commit, one fsync for the embedded
// stage, whose writes are serial: large groups are what makes an initial
// load fast there).
const (
	workers    = 2
	fetchBatch = 32
	ackWait    = 30 * time.Second
	// maxAttempts counts deliveries of a message that fails for another
	// reason than an outage (which is waited out) before it is
	// dead-lettered on bus.StagerDLQSubject.
	maxAttempts = 5
	// stagedChunkBytes bounds the keys of one Staged message.
	stagedChunkBytes = 256 << 10
)

// Stager stages one pipeline's changes.
type Stager struct {
	cfg     *config.Pipeline
	bus     *natsbus.Bus
	store   stage.Store
	log     *slog.Logger
	metrics *telemetry.Metrics
	layout  stage.Layout
	targets map[string]bool

	kv      jetstream.KeyValue
	colsMu  sync.Mutex
	colsPut []byte // the layout last written to the state bucket

	// OnReady, when set before Run, is called once the consumer is bound.
	OnReady func()
}

// New returns a stager for cfg (which must be in staged mode) on store.
// metrics may be nil.
func New(cfg *config.Pipeline, b *natsbus.Bus, store stage.Store, log *slog.Logger, metrics *telemetry.Metrics) (*Stager, error) {
	if !cfg.Staged() {
		return nil, fmt.Errorf("pipeline %s is not in staged mode", cfg.Pipeline)
	}
	targets := map[string]bool{}
	for _, t := range cfg.Targets {
		targets[t.Name] = true
	}
	return &Stager{cfg: cfg, bus: b, store: store, metrics: metrics, layout: stage.LayoutOf(cfg), targets: targets,
		log: log.With("component", "stager")}, nil
}

// Name implements runner.Component.
func (s *Stager) Name() string { return "stager" }

// ConsumerSpec is the durable consumer the stagers of a pipeline share: the
// source, every target's read-back and every target's applied reports.
func ConsumerSpec(cfg *config.Pipeline) natsbus.ConsumerSpec {
	p := cfg.Pipeline
	return natsbus.ConsumerSpec{
		Stream:         bus.StreamName(p),
		Durable:        bus.StagerConsumer(p),
		FilterSubjects: []string{bus.SourceSubject(p), bus.TargetSubjects(p), bus.AppliedSubjects(p)},
		AckWait:        ackWait,
		MaxAckPending:  workers * fetchBatch * 2,
	}
}

// Run consumes until ctx ends, then finishes in-flight groups and returns.
func (s *Stager) Run(ctx context.Context) error {
	kv, cons, err := s.bus.PipelineConsumer(ctx, s.cfg, ConsumerSpec(s.cfg))
	if err != nil {
		return err
	}
	s.kv = kv
	if s.OnReady != nil {
		s.OnReady()
	}
	s.log.Info("stager consuming", "consumer", bus.StagerConsumer(s.cfg.Pipeline))
	return s.bus.ConsumeBatches(ctx, cons, s.handle, natsbus.ConsumeOptions{
		Workers: workers, FetchBatch: fetchBatch, MaxAttempts: maxAttempts, AckWait: ackWait,
		DeadLetterSubject: bus.StagerDLQSubject(s.cfg.Pipeline),
		Headers:           map[string]string{bus.HeaderPipeline: s.cfg.Pipeline},
		Log:               s.log,
		Recreate: func(ctx context.Context) (jetstream.Consumer, error) {
			return s.bus.EnsureConsumer(ctx, ConsumerSpec(s.cfg))
		},
		OnOutcome: func(o natsbus.Outcome) {
			if o == natsbus.OutcomeDeadLetter && s.metrics != nil {
				s.metrics.DeadLetters.WithLabelValues(s.cfg.Pipeline, "_stager").Inc()
			}
		},
	})
}

// incoming is one consumed message, decoded.
type incoming struct {
	seq  uint64
	side stage.Side
	// applied: a writer's applied report (staged with ApplyReports).
	applied bool
	keys    []string // the keys of its changes
	// quiet: an applied report of changes that left the target exactly as
	// pushed (bus.HeaderAsPushed): staged, but not handed to the differ,
	// which decided that state itself.
	quiet bool
}

// group is what one transaction of handle stages: the records of one
// side, either from the source or a read-back (Apply) or from a writer's
// applied reports (ApplyReports).
type group struct {
	side    stage.Side
	applied bool
}

// handled is what staging one group did: the keys it touched, and, for
// applied reports, the keys whose last push a report confirmed although
// the stage kept a newer record (a read-back published after the push).
type handled struct {
	touched map[string]bool
	// confirmed: the differ may have set these keys aside while their
	// push was in flight, and hears of them only from the stager now.
	confirmed map[string]bool
}

// handle stages a group of messages: per side (and per kind: applied
// reports apart), one transaction of all their records; then, per
// message, its touched keys on the staged subject.
func (s *Stager) handle(ctx context.Context, msgs []jetstream.Msg) error {
	start := time.Now()
	ins := make([]incoming, 0, len(msgs))
	decoded := make([][]stage.Record, 0, len(msgs))
	sizes := map[group]int{}
	var vals [][]byte
	for _, msg := range msgs {
		in, recs, err := s.decode(ctx, msg, &vals)
		if err != nil {
			return err
		}
		if in.side == "" {
			continue // not for this pipeline's targets: acked, ignored
		}
		ins = append(ins, in)
		decoded = append(decoded, recs)
		sizes[group{in.side, in.applied}] += len(recs)
	}
	// One slice per group, allocated once: a group holds tens of thousands
	// of records, and growing the slice message by message copies them
	// over and over.
	byGroup := make(map[group][]stage.Record, len(sizes))
	var groups []group
	for i, in := range ins {
		g := group{in.side, in.applied}
		if _, ok := byGroup[g]; !ok {
			groups = append(groups, g)
			byGroup[g] = make([]stage.Record, 0, sizes[g])
		}
		byGroup[g] = append(byGroup[g], decoded[i]...)
		decoded[i] = nil
	}
	done := map[group]handled{}
	for _, g := range groups {
		var res stage.Applied
		err := retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Attempts: 3,
			OnRetry: func(err error, wait time.Duration) {
				s.log.Warn("stage apply failed; retrying", "side", string(g.side), "applied", g.applied, "error", err, "wait", wait)
			}}, func(ctx context.Context) error {
			var err error
			if name, ok := g.side.Target(); ok && g.applied {
				res, err = s.store.ApplyReports(ctx, name, byGroup[g])
			} else {
				res, err = s.store.Apply(ctx, g.side, byGroup[g])
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("stage %d records on %s: %w", len(byGroup[g]), g.side, err)
		}
		h := handled{touched: make(map[string]bool, len(res.Changed)+len(res.Current))}
		for _, k := range res.Touched() {
			h.touched[k.Text] = true
		}
		for _, k := range res.Confirmed {
			if !h.touched[k.Text] {
				if h.confirmed == nil {
					h.confirmed = map[string]bool{}
				}
				h.confirmed[k.Text] = true
			}
		}
		done[g] = h
		if m := s.metrics; m != nil {
			m.EventsProcessed.WithLabelValues("stager", s.cfg.Pipeline, telemetry.OutcomeApplied).Add(float64(len(res.Changed)))
			m.EventsProcessed.WithLabelValues("stager", s.cfg.Pipeline, telemetry.OutcomeSkipped).Add(float64(len(res.Current) + res.Stale))
		}
	}
	var futures []jetstream.PubAckFuture
	for _, in := range ins {
		fs, err := s.publishStaged(ctx, in, done[group{in.side, in.applied}])
		if err != nil {
			return err
		}
		futures = append(futures, fs...)
	}
	if err := natsbus.WaitAcks(ctx, futures); err != nil {
		return fmt.Errorf("publish staged keys: %w", err)
	}
	if s.metrics != nil {
		s.metrics.OperationDuration.WithLabelValues("stager_group").Observe(time.Since(start).Seconds())
	}
	return nil
}

// decode turns one message into stage records. A message for a target the
// config does not name returns an empty side.
func (s *Stager) decode(ctx context.Context, msg jetstream.Msg, vals *[][]byte) (incoming, []stage.Record, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return incoming{}, nil, errs.Permanent(err)
	}
	seq := meta.Sequence.Stream
	p := s.cfg.Pipeline
	var side stage.Side
	applied := false
	switch subj := msg.Subject(); {
	case subj == bus.SourceSubject(p):
		side = stage.SourceSide
	case strings.HasPrefix(subj, bus.TargetSubject(p, "")):
		side = stage.TargetSide(strings.TrimPrefix(subj, bus.TargetSubject(p, "")))
	case strings.HasPrefix(subj, bus.AppliedSubject(p, "")):
		side, applied = stage.TargetSide(strings.TrimPrefix(subj, bus.AppliedSubject(p, ""))), true
	default:
		return incoming{}, nil, errs.Permanentf("stream seq %d: subject %s is not staged", seq, subj)
	}
	if name, ok := side.Target(); ok && !s.targets[name] {
		s.log.Warn("message for a target the config does not name; ignored", "subject", msg.Subject(), "stream_seq", seq)
		return incoming{}, nil, nil
	} else if !ok && side != stage.SourceSide {
		return incoming{}, nil, errs.Permanentf("stream seq %d: subject %s names no valid target", seq, msg.Subject())
	}
	b, err := event.Decode(msg.Data())
	if err != nil {
		return incoming{}, nil, fmt.Errorf("pipeline %s stream seq %d: %w", p, seq, err)
	}
	if b.GetPipeline() != p {
		return incoming{}, nil, errs.Permanentf("stream seq %d: batch of pipeline %q on pipeline %q's subject", seq, b.GetPipeline(), p)
	}
	if len(b.GetChanges()) >= 1<<event.VersionIndexBits {
		return incoming{}, nil, errs.Permanentf("stream seq %d: batch of %d changes exceeds 2^20", seq, len(b.GetChanges()))
	}
	m, err := s.layout.Map(b)
	if err != nil {
		return incoming{}, nil, fmt.Errorf("stream seq %d: %w", seq, err)
	}
	if side == stage.SourceSide {
		if err := s.saveColumns(ctx, b, m); err != nil {
			return incoming{}, nil, err
		}
	}
	in := incoming{seq: seq, side: side, applied: applied, keys: make([]string, 0, len(b.GetChanges())),
		quiet: applied && msg.Headers().Get(bus.HeaderAsPushed) == "true"}
	recs := make([]stage.Record, 0, len(b.GetChanges()))
	for i, c := range b.GetChanges() {
		version := event.Version(seq, i)
		if applied {
			if c.GetVersion() == 0 || c.GetVersion() > 1<<63-1 {
				return incoming{}, nil, errs.Permanentf("stream seq %d change %d: an applied report without a valid version", seq, i)
			}
			version = int64(c.GetVersion())
		}
		var r stage.Record
		r, *vals, err = s.layout.Record(m, c, version, *vals)
		if err != nil {
			return incoming{}, nil, fmt.Errorf("stream seq %d change %d: %w", seq, i, err)
		}
		recs = append(recs, r)
		in.keys = append(in.keys, r.Key.Text)
	}
	return in, recs, nil
}

// saveColumns writes the stage layout with the source's column types to the
// state bucket when it changed: the differ builds its pushes from it. It is
// written before the records, so a differ never meets a staged source row
// without a layout.
func (s *Stager) saveColumns(ctx context.Context, b *onewayv1.Batch, m stage.Mapping) error {
	layout := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: s.cfg.Pipeline, Origin: string(stage.SourceSide),
		Table: b.GetTable(), Columns: m.Columns(b)}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(layout)
	if err != nil {
		return fmt.Errorf("encode stage layout: %w", err)
	}
	s.colsMu.Lock()
	defer s.colsMu.Unlock()
	if slices.Equal(data, s.colsPut) {
		return nil
	}
	key := bus.StageColumnsKey(s.cfg.Pipeline)
	if e, err := s.kv.Get(ctx, key); err == nil && slices.Equal(e.Value(), data) {
		s.colsPut = data
		return nil
	}
	if _, err := s.kv.Put(ctx, key, data); err != nil {
		return fmt.Errorf("save stage layout to %s: %w", key, err)
	}
	s.colsPut = data
	s.log.Info("stage layout saved", "table", b.GetTable(), "columns", len(layout.Columns))
	return nil
}

// publishStaged publishes the keys of in that its group touched (none
// for a quiet report) and those whose push it confirmed under a newer
// record, in key order, split into messages of at most stagedChunkBytes.
// The Msg-Id names the consumed message and the chunk, so a redelivery
// republishes duplicates.
func (s *Stager) publishStaged(ctx context.Context, in incoming, h handled) ([]jetstream.PubAckFuture, error) {
	keys := make([]string, 0, len(in.keys))
	for _, k := range in.keys {
		if (h.touched[k] && !in.quiet) || h.confirmed[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	var futures []jetstream.PubAckFuture
	for chunk := 0; len(keys) > 0; chunk++ {
		n, size := 0, 0
		for n < len(keys) && (n == 0 || size+len(keys[n])+4 <= stagedChunkBytes) {
			size += len(keys[n]) + 4
			n++
		}
		data, err := proto.Marshal(&onewayv1.Staged{SchemaVersion: event.SchemaVersion, Pipeline: s.cfg.Pipeline,
			Side: string(in.side), Keys: keys[:n]})
		if err != nil {
			return nil, fmt.Errorf("encode staged keys: %w", err)
		}
		id := "staged:" + strconv.FormatUint(in.seq, 10) + ":" + strconv.Itoa(chunk)
		f, err := s.bus.PublishAsync(ctx, bus.StagedSubject(s.cfg.Pipeline), data, id)
		if err != nil {
			return nil, err
		}
		futures = append(futures, f)
		keys = keys[n:]
	}
	return futures, nil
}
