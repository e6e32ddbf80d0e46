package app

import (
	"context"
	"errors"
	"fmt"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/capture"
	"github.com/oneway-sync/oneway/services/reader/internal/debezium"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/kafkaconn"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// runKafka is Run for a source of kind kafka: a topic of Debezium change
// events read in a consumer group (capture pattern cdc). The consumer
// group's committed offsets are the position; the saved reader position
// only names the topic and table.
func (r *Reader) runKafka(ctx context.Context) error {
	spec, err := kafkaSpec(r.cfg, int(r.bus.NC.MaxPayload())*3/4, r)
	if err != nil {
		return err
	}
	capt := debezium.New(spec)
	if _, err := r.bus.EnsureStream(ctx, natsbus.PipelineStream(r.cfg)); err != nil {
		return err
	}
	kv, err := r.bus.StateKV(ctx, r.cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	setup := capture.Setup{Pattern: config.PatternCDC, Source: kafkaSourceName(r.cfg), Stream: true}
	holder := holderID()
	for {
		l, err := acquireLease(ctx, kv, bus.ReaderLeaseKey(r.cfg.Pipeline, r.side.name), holder, r.log)
		if err != nil {
			return nil // ctx ended while standing by
		}
		err = r.runActive(ctx, capt, setup, kv, l)
		l.stop()
		if errors.Is(err, errFenced) {
			r.log.Warn("another reader published meanwhile; this reader stands by", "error", err)
			continue
		}
		return err
	}
}

// kafkaSpec is the Debezium capture of cfg's kafka source; it fails for
// good when the source's TLS files cannot be read.
func kafkaSpec(cfg *config.Pipeline, budget int, r *Reader) (debezium.Spec, error) {
	src := cfg.Source
	cols := make([]*onewayv1.Column, len(src.Columns))
	var keyIdx []int
	for _, k := range src.Key {
		for i, c := range src.Columns {
			if c == k {
				keyIdx = append(keyIdx, i)
			}
		}
	}
	for i, c := range src.Columns {
		cols[i] = &onewayv1.Column{Name: c, Type: src.Types[c]}
	}
	for _, i := range keyIdx {
		cols[i].Key = true
	}
	tlsCfg, mech, err := kafkaconn.Settings(src.Kafka.KafkaAuth)
	if err != nil {
		return debezium.Spec{}, fmt.Errorf("source.kafka: %w", err)
	}
	return debezium.Spec{
		Brokers: src.Kafka.Brokers, Topic: src.Kafka.Topic, Group: src.Kafka.Group,
		Layout:    capture.Layout{Pipeline: cfg.Pipeline, Table: src.Table, Columns: cols, KeyIdx: keyIdx, Budget: budget},
		BatchSize: src.Capture.BatchSize, TLS: tlsCfg, SASL: mech, Log: r.log,
	}, nil
}

// kafkaSourceName names what a kafka source's position is about: the
// topic, and the table and key its events become.
func kafkaSourceName(cfg *config.Pipeline) string {
	return "kafka:" + cfg.Source.Kafka.Topic + "→" + sourceName(cfg.Source)
}
