// Package kafkatarget produces each change as a record to a Kafka topic.
//
// Record key: the record key as event.Key renders it (a single column's
// text, or a JSON array of the texts of a composite key). Value: the change
// envelope of package changejson,
//
//	{"op":"upsert","key":"42","fields":{"id":42,"name":"x"},"version":123}
//
// and for a delete a tombstone (null value), so a compacted topic drops the
// key. Header oneway-version holds the change's version in decimal. Records
// are partitioned by a hash of the key (kafka.Hash: FNV-1a, as sarama's
// default partitioner; not the Java client's murmur2), the same in every
// writer, so all changes of a key land on one partition, in order — as long
// as the topic's partition count does not change.
//
// Fencing: Kafka cannot compare versions, so the target is fenced by a
// PostgreSQL side ledger (package sideledger, table
// <ledger_schema>.kafka_ledger_<scope>): a change is produced only when it
// is newer than, and differs in content from, what the ledger recorded for
// its key, and the key's ledger row stays locked until the record is
// acknowledged by all in-sync replicas (acks=all) and the ledger committed.
// Writers racing on a key therefore produce its changes in increasing
// version order; when Apply returns early (ctx ended) the keys stay locked
// until the records in flight are acknowledged or have failed.
//
// Delivery guarantee, precisely: at least once, in key order. Every change
// the ledger records is in the topic (acks=all). A change produced whose
// ledger transaction is then lost (a crash, a commit failure, another
// change of the call failing) is produced again on redelivery: the topic
// may hold a key's record twice, or an older version after a newer one was
// produced by a call that failed; the last record of a key is always its
// newest version, so log compaction and consumers that keep the highest
// oneway-version per key converge on the source. (kafka-go has no
// idempotent or transactional producer, so Kafka cannot drop the
// duplicates itself.)
package kafkatarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger/changejson"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// HeaderVersion is the record header holding the change's version.
const HeaderVersion = "oneway-version"

const (
	defaultTimeout    = 10 * time.Second
	defaultAttempts   = 3
	defaultBatchBytes = 1 << 20
	backoffMin        = 100 * time.Millisecond
	backoffMax        = time.Second
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	Brokers          []string // bootstrap brokers, host:port
	Topic            string
	// AllowAutoTopicCreation lets the first write create the topic with
	// the brokers' defaults. Off, a missing topic is an outage (Unavailable)
	// until someone creates it.
	AllowAutoTopicCreation bool
	Timeout                time.Duration // per produce request and metadata read, default 10s
	MaxAttempts            int           // attempts per batch on retriable errors, default 3
	// BatchBytes is the largest produce request; a record larger than it is
	// rejected for good. Default 1 MiB (the brokers' default
	// message.max.bytes).
	BatchBytes int64
	// Transport carries TLS and SASL settings; nil = a plain-text transport
	// of the Target's own.
	Transport    *kafka.Transport
	Ledger       *pgxpool.Pool // PostgreSQL holding the fencing ledger
	LedgerSchema string        // default "oneway"
}

// Target produces batches to one topic. Safe for concurrent use.
type Target struct {
	spec Spec
	log  *slog.Logger
	w    *kafka.Writer
	// one sends records one per produce request, to isolate a rejected
	// one: on w, a record sent alone may still share its partition's
	// produce request with records of a concurrent Apply, and a request
	// is accepted or rejected whole, so one poison record would reject
	// the others with it.
	one       *kafka.Writer
	transport *kafka.Transport // ours, closed by Close
	ledger    *sideledger.Ledger
	bound     time.Duration // longest a write can stay in flight
}

var _ target.Writer = (*Target)(nil)

// Open checks spec, registers the target in <ledger_schema>.ledger_scopes
// (table_name "kafka:" + topic), creates its ledger table and returns a
// Target. The brokers need not be up: writes fail as Unavailable until
// they are.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Ledger == nil {
		return nil, errs.Permanentf("kafka target %q: no ledger database", spec.Target)
	}
	if len(spec.Brokers) == 0 {
		return nil, errs.Permanentf("kafka target %q: no brokers", spec.Target)
	}
	if spec.Topic == "" || strings.ContainsAny(spec.Topic, " /\\,:") || len(spec.Topic) > 249 {
		return nil, errs.Permanentf("kafka target %q: invalid topic %q", spec.Target, spec.Topic)
	}
	if spec.Timeout <= 0 {
		spec.Timeout = defaultTimeout
	}
	if spec.MaxAttempts <= 0 {
		spec.MaxAttempts = defaultAttempts
	}
	if spec.BatchBytes <= 0 {
		spec.BatchBytes = defaultBatchBytes
	}
	if spec.LedgerSchema == "" {
		spec.LedgerSchema = sideledger.DefaultSchema
	}
	t := &Target{spec: spec, log: log}
	var err error
	t.ledger, err = sideledger.Open(ctx, sideledger.Spec{
		Pipeline: spec.Pipeline, Target: spec.Target, Kind: "kafka", Sink: spec.Topic,
		Describe: "Kafka topic " + spec.Topic, Pool: spec.Ledger, Schema: spec.LedgerSchema,
	})
	if err != nil {
		return nil, err
	}
	tr := spec.Transport
	if tr == nil {
		tr = &kafka.Transport{DialTimeout: spec.Timeout, ClientID: "oneway-writer-" + spec.Pipeline + "-" + spec.Target}
		t.transport = tr
	}
	newWriter := func(batchSize int) *kafka.Writer {
		return &kafka.Writer{
			Addr:  kafka.TCP(spec.Brokers...),
			Topic: spec.Topic,
			// One key, one partition: per-key order.
			Balancer: &kafka.Hash{},
			// kafka-go defaults to acks=0 (fire and forget).
			RequiredAcks:           kafka.RequireAll,
			AllowAutoTopicCreation: spec.AllowAutoTopicCreation,
			MaxAttempts:            spec.MaxAttempts,
			WriteBackoffMin:        backoffMin,
			WriteBackoffMax:        backoffMax,
			// An Apply waits for its records: send a partition's records at
			// once rather than waiting up to a second to fill a batch.
			BatchSize:    batchSize,
			BatchBytes:   spec.BatchBytes,
			BatchTimeout: time.Millisecond,
			ReadTimeout:  spec.Timeout,
			WriteTimeout: spec.Timeout,
			Transport:    tr,
			ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
				log.Debug("kafka target: "+fmt.Sprintf(msg, args...), "target", spec.Target)
			}),
		}
	}
	t.w, t.one = newWriter(10000), newWriter(1)
	t.bound = time.Duration(spec.MaxAttempts)*(2*spec.Timeout+backoffMax) + 2*spec.Timeout
	return t, nil
}

// Close flushes and closes the producer.
func (t *Target) Close() error {
	err := errors.Join(t.w.Close(), t.one.Close())
	if t.transport != nil {
		t.transport.CloseIdleConnections()
	}
	return err
}

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger.Table() }

// Scope is this target's id in the ledger catalog.
func (t *Target) Scope() int32 { return t.ledger.Scope() }

// Apply produces the items' changes, fenced by the ledger, in one ledger
// transaction. Items must share one column layout. A record the brokers
// reject for good (larger than BatchBytes or the topic's
// max.message.bytes, or an invalid record) comes back in Result.Failed; any
// other failure (brokers down, topic missing, not enough replicas, timeouts
// after MaxAttempts) fails the call as errs.Unavailable and nothing is
// recorded.
func (t *Target) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	return t.ledger.Apply(ctx, items, t.send)
}

// send produces the batch's records and waits for their acks.
func (t *Target) send(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
	outs := make([]sideledger.Outcome, len(b.Decisions))
	msgs := make([]kafka.Message, 0, len(b.Decisions))
	idx := make([]int, 0, len(b.Decisions)) // msgs[i] is decision idx[i]
	for i, d := range b.Decisions {
		m := kafka.Message{
			Key:     []byte(d.Key),
			Headers: []kafka.Header{{Key: HeaderVersion, Value: []byte(strconv.FormatInt(d.Version, 10))}},
		}
		if !d.Delete {
			v, err := changejson.Envelope(b.Columns, d.Values, d.Key, false, d.Version)
			if err != nil {
				outs[i].Err = errs.Permanentf("encode key %s: %w", d.Key, err)
				continue
			}
			m.Value = v
		}
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	for len(msgs) > 0 {
		err := t.write(ctx, b, t.w, msgs...)
		if err == nil {
			return outs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A record over BatchBytes: kafka-go refuses the call before sending
		// anything. Reject that record and send the others.
		var tooLarge kafka.MessageTooLargeError
		if errors.As(err, &tooLarge) {
			i := find(msgs, tooLarge.Message.Key)
			if i < 0 {
				return nil, t.unavailable(err)
			}
			outs[idx[i]].Err = errs.Permanent(fmt.Errorf("produce key %s to %s: record of %d bytes exceeds %d",
				b.Decisions[idx[i]].Key, t.spec.Topic, len(msgs[i].Key)+len(msgs[i].Value), t.spec.BatchBytes))
			msgs = append(msgs[:i], msgs[i+1:]...)
			idx = append(idx[:i], idx[i+1:]...)
			continue
		}
		// Per-record errors. A produce request is all or nothing per
		// partition, so a rejection may be another record's: send the
		// records of rejected partitions again one by one.
		var werrs kafka.WriteErrors
		if !errors.As(err, &werrs) || len(werrs) != len(msgs) {
			return nil, t.unavailable(err)
		}
		for _, e := range werrs {
			if e == nil {
				continue
			}
			if !rejected(e) {
				return nil, t.unavailable(e)
			}
		}
		for i, e := range werrs {
			if e == nil {
				continue
			}
			if err := t.write(ctx, b, t.one, msgs[i]); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				var one kafka.WriteErrors
				if errors.As(err, &one) && len(one) == 1 && rejected(one[0]) {
					err = one[0]
				}
				if !rejected(err) {
					return nil, t.unavailable(err)
				}
				outs[idx[i]].Err = errs.Permanent(fmt.Errorf("produce key %s to %s: %w", b.Decisions[idx[i]].Key, t.spec.Topic, err))
			}
		}
		return outs, nil
	}
	return outs, nil
}

// write produces msgs on w and waits for their acks. When ctx ends first
// it returns at once but keeps the batch's keys locked until the records
// in flight are acked or have failed (kafka-go goes on sending them).
func (t *Target) write(ctx context.Context, b sideledger.Batch, w *kafka.Writer, msgs ...kafka.Message) error {
	done := make(chan error, 1)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.bound)
	go func() {
		defer cancel()
		done <- w.WriteMessages(wctx, msgs...)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		settled := make(chan struct{})
		go func() {
			<-done
			close(settled)
		}()
		b.Settle(settled)
		return ctx.Err()
	}
}

func find(msgs []kafka.Message, key []byte) int {
	for i := range msgs {
		if string(msgs[i].Key) == string(key) {
			return i
		}
	}
	return -1
}

// rejected reports whether the brokers refused records for good: too
// large, or invalid.
func rejected(err error) bool {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		return false
	}
	switch ke {
	case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord:
		return true
	}
	return false
}

func (t *Target) unavailable(err error) error {
	return errs.Unavailable(fmt.Errorf("kafka target %s: produce to %s: %w", t.spec.Target, t.spec.Topic, err))
}
