package debezium

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/capture"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Spec configures a Capture.
type Spec struct {
	Brokers []string
	Topic   string
	// Group is the consumer group. Its committed offsets are the reader's
	// real position: the saved reader position only names the topic.
	Group string
	// Layout is the batches' table, owned columns (with their types) and
	// key, and the most bytes a message may take.
	Layout capture.Layout
	// BatchSize is the most changes per page.
	BatchSize int
	// Idle is how long a fetch waits for a message before the capture
	// checks whether it has read everything (and reports being caught
	// up). Default 500ms.
	Idle time.Duration
	// SessionTimeout is the consumer group session timeout: how long the
	// group waits for a crashed member before it hands its partitions to
	// the next reader. Default 10s.
	SessionTimeout time.Duration
	// TLS (nil: plain text) and SASL (nil: none) to the brokers
	// (kafkaconn.Settings).
	TLS  *tls.Config
	SASL sasl.Mechanism
	Log  *slog.Logger
}

// Capture reads a topic of Debezium change events in a consumer group.
//
// Its pages hold the changes of the messages fetched since the previous
// page, in fetch order; each page's Commit commits the consumer group's
// offsets of exactly the messages the page covers (its changes, and the
// tombstones and already-published messages among them), and the reader
// runs it only after JetStream acknowledged the page. So an offset is
// committed only once its change is durable in JetStream; a crash before
// the commit makes Kafka deliver the messages again.
//
// Each change's Position is "kafka:<partition>:<offset>". On a new term,
// Run reads the last batch on the source subject (last): when a
// partition's first message of the term lies within that batch's offsets,
// the group resumed inside the last page, which was published and whose
// commit was lost (the reader commits each page before publishing the
// next, so only the last page can be in that state); the messages up to
// the batch's last offset are then committed without being published
// again. A term that starts anywhere else (a new group, offsets reset to
// read the topic again) publishes everything it reads.
//
// Order: Debezium keys each event by the record's key, so all the events of
// one key are in one partition, where Kafka keeps them in offset order.
// Run emits each partition's messages in offset order (a message below one
// it already emitted in this term, as a group rebalance delivers again, is
// dropped: its page is ahead in the queue), and the reader publishes pages
// one at a time, in order, fenced. So the stream sequences, which are the
// versions writers fence on, rise with the offsets of each key's events.
//
// A malformed event stops Run with a permanent error naming topic,
// partition, offset and the cause, and its offset is not committed. It is
// not skipped: change events carry no later correction, so a skipped
// update would leave its key at an older state in every target. Fix the
// config (a type, a column) and restart, or, for an event that is garbage,
// move the group past it deliberately (kafka-consumer-groups
// --reset-offsets --shift-by 1).
type Capture struct {
	spec Spec
	dec  *Decoder
}

var _ capture.Capture = (*Capture)(nil)

// New returns a capture for spec.
func New(spec Spec) *Capture {
	cols := make([]Column, len(spec.Layout.Columns))
	for i, c := range spec.Layout.Columns {
		cols[i] = Column{Name: c.GetName(), Type: c.GetType()}
	}
	if spec.Idle <= 0 {
		spec.Idle = 500 * time.Millisecond
	}
	if spec.SessionTimeout <= 0 {
		spec.SessionTimeout = 10 * time.Second
	}
	if spec.BatchSize <= 0 {
		spec.BatchSize = 1000
	}
	if spec.Log == nil {
		spec.Log = slog.New(slog.DiscardHandler)
	}
	return &Capture{spec: spec, dec: NewDecoder(cols, spec.Layout.KeyIdx)}
}

// positionOf is a change's Position: where in the topic it was read.
func positionOf(m kafka.Message) string {
	return "kafka:" + strconv.Itoa(m.Partition) + ":" + strconv.FormatInt(m.Offset, 10)
}

// span is a range of offsets of one partition.
type span struct{ min, max int64 }

// publishedOffsets returns, by partition, the range of offsets of the
// changes of b (the last batch on the subject).
func publishedOffsets(b *onewayv1.Batch) map[int]span {
	out := map[int]span{}
	for _, c := range b.GetChanges() {
		rest, ok := strings.CutPrefix(c.GetPosition(), "kafka:")
		if !ok {
			continue
		}
		ps, os, ok := strings.Cut(rest, ":")
		p, err1 := strconv.Atoi(ps)
		o, err2 := strconv.ParseInt(os, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		cur, seen := out[p]
		if !seen {
			cur = span{o, o}
		}
		out[p] = span{min(cur.min, o), max(cur.max, o)}
	}
	return out
}

// Run implements capture.Capture. pos only names the topic; the consumer
// group's committed offsets say where reading resumes.
func (c *Capture) Run(ctx context.Context, pos capture.Position, last *onewayv1.Batch, emit func(capture.Page) error) error {
	s := c.spec
	published := publishedOffsets(last)
	clientID := "oneway-reader-" + s.Layout.Pipeline
	tr := &kafka.Transport{ClientID: clientID, TLS: s.TLS, SASL: s.SASL}
	defer tr.CloseIdleConnections()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: s.Brokers, GroupID: s.Group, Topic: s.Topic,
		Dialer:           &kafka.Dialer{ClientID: clientID, Timeout: 10 * time.Second, DualStack: true, TLS: s.TLS, SASLMechanism: s.SASL},
		StartOffset:      kafka.FirstOffset,
		CommitInterval:   0, // CommitMessages commits synchronously
		MaxWait:          250 * time.Millisecond,
		SessionTimeout:   s.SessionTimeout,
		RebalanceTimeout: s.SessionTimeout,
		JoinGroupBackoff: 500 * time.Millisecond,
		ReadBackoffMax:   time.Second,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			s.Log.Warn("kafka reader", "topic", s.Topic, "detail", fmt.Sprintf(msg, args...))
		}),
	})
	defer func() {
		if err := r.Close(); err != nil {
			s.Log.Warn("close kafka reader", "topic", s.Topic, "error", err)
		}
	}()
	s.Log.Info("kafka source reading", "topic", s.Topic, "group", s.Group, "brokers", strings.Join(s.Brokers, ","))

	next := map[int]int64{}   // the next offset of each partition this term
	skipTo := map[int]int64{} // the last offset of the last page, when the term resumed inside it
	var msgs []kafka.Message
	var changes []*onewayv1.Change
	var owner []int // owner[i]: the index in msgs of changes[i]'s message
	reported := false
	for {
		wait := s.Idle
		if len(msgs) > 0 {
			wait = 10 * time.Millisecond
		}
		fctx, cancel := context.WithTimeout(ctx, wait)
		m, err := r.FetchMessage(fctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if len(msgs) > 0 {
				if err := c.flush(r, pos, msgs, changes, owner, emit); err != nil {
					return err
				}
				msgs, changes, owner, reported = nil, nil, nil, false
				continue
			}
			if !reported && c.caughtUp(ctx, tr, next) {
				if err := emit(capture.Page{Next: pos, CaughtUp: true}); err != nil {
					return err
				}
				reported = true
			}
			continue
		case err != nil:
			return fmt.Errorf("fetch from kafka topic %s: %w", s.Topic, err)
		}
		n, seen := next[m.Partition]
		if seen && m.Offset < n {
			continue // delivered again after a rebalance; already emitted
		}
		if sp, ok := published[m.Partition]; !seen && ok && m.Offset >= sp.min && m.Offset <= sp.max {
			skipTo[m.Partition] = sp.max
		}
		next[m.Partition] = m.Offset + 1
		msgs = append(msgs, m)
		if to, ok := skipTo[m.Partition]; ok && m.Offset <= to {
			continue // published before a crash; only its commit is missing
		}
		ev, ok, err := c.dec.Decode(m.Key, m.Value)
		if err != nil {
			return errs.Permanentf("kafka topic %s partition %d offset %d: malformed change event: %v (the reader stops and does not commit it; see the README, Kafka source)",
				m.Topic, m.Partition, m.Offset, err)
		}
		if !ok {
			continue // a tombstone: the delete before it did the work
		}
		packed := event.PackRow(ev.Values)
		ch := &onewayv1.Change{Op: ev.Op, Row: packed, Position: positionOf(m), Version: uint64(m.Offset),
			CapturedAtUnixNano: time.Now().UnixNano()}
		if ev.Op != onewayv1.Op_OP_DELETE {
			ch.Hash = event.RowHash(packed)
		}
		changes = append(changes, ch)
		owner = append(owner, len(msgs)-1)
		if len(changes) >= s.BatchSize {
			if err := c.flush(r, pos, msgs, changes, owner, emit); err != nil {
				return err
			}
			msgs, changes, owner, reported = nil, nil, nil, false
		}
	}
}

// flush emits the changes as pages within the message budget; each page
// commits the messages up to its last change, and the last page (or a
// marker, when there are no changes) the rest.
func (c *Capture) flush(r *kafka.Reader, pos capture.Position, msgs []kafka.Message, changes []*onewayv1.Change, owner []int,
	emit func(capture.Page) error) error {
	l := &c.spec.Layout
	commit := func(ms []kafka.Message) func(context.Context) error {
		// The last message of each partition commits everything before it.
		lastOf := map[int]kafka.Message{}
		for _, m := range ms {
			lastOf[m.Partition] = m
		}
		tail := make([]kafka.Message, 0, len(lastOf))
		for _, m := range lastOf {
			tail = append(tail, m)
		}
		return func(ctx context.Context) error {
			if err := r.CommitMessages(ctx, tail...); err != nil {
				return fmt.Errorf("commit offsets of kafka topic %s: %w", c.spec.Topic, err)
			}
			return nil
		}
	}
	page := func(from, to, msgFrom, msgTo int) error { // changes[from:to], msgs[msgFrom:msgTo]
		p := capture.Page{Next: pos, Commit: commit(msgs[msgFrom:msgTo])}
		if to > from {
			p.Batch = &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: l.Pipeline, Origin: "source",
				Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, Table: l.Table, Columns: l.Columns, Changes: changes[from:to]}
		}
		return emit(p)
	}
	start, msgStart, size := 0, 0, 0
	for i, ch := range changes {
		n := 48 + len(ch.GetRow()) + len(ch.GetPosition())
		if i > start && size+n > l.Budget {
			if err := page(start, i, msgStart, owner[i-1]+1); err != nil {
				return err
			}
			start, msgStart, size = i, owner[i-1]+1, 0
		}
		size += n
	}
	return page(start, len(changes), msgStart, len(msgs))
}

// caughtUp reports whether this term has read every message the topic
// holds: for each partition, the end offset is at most the next offset
// this term reads (or, for a partition it has not read from, the group's
// committed offset, or the partition's first offset). Errors count as not
// caught up; the next idle period asks again.
func (c *Capture) caughtUp(ctx context.Context, tr *kafka.Transport, next map[int]int64) bool {
	s := c.spec
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(s.Brokers...), Timeout: 5 * time.Second, Transport: tr}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.Topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		s.Log.Debug("kafka end offsets unknown", "topic", s.Topic, "error", err)
		return false
	}
	var ids []int
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		ids = append(ids, p.ID)
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{s.Topic: reqs}})
	if err != nil {
		s.Log.Debug("kafka end offsets unknown", "topic", s.Topic, "error", err)
		return false
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: s.Group, Topics: map[string][]int{s.Topic: ids}})
	if err != nil || of.Error != nil {
		s.Log.Debug("kafka committed offsets unknown", "topic", s.Topic, "error", errors.Join(err, of.Error))
		return false
	}
	committed := map[int]int64{}
	for _, p := range of.Topics[s.Topic] {
		committed[p.Partition] = p.CommittedOffset
	}
	for _, p := range lo.Topics[s.Topic] {
		if p.Error != nil {
			return false
		}
		have := max(p.FirstOffset, committed[p.Partition])
		if n, ok := next[p.Partition]; ok {
			have = max(have, n)
		}
		if p.LastOffset > have {
			return false
		}
	}
	return len(lo.Topics[s.Topic]) == len(ids)
}
