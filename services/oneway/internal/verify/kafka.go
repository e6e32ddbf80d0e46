package verify

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaVersionHeader is the record header holding a change's version.
const kafkaVersionHeader = "oneway-version"

// ScanKafka is a Scan of a Kafka target's topic: every partition from its
// start offset to the end offset it had when the scan began. A record
// with a value is a change envelope; a tombstone (no value) deletes its
// key (the record key), at the version in its oneway-version header.
func ScanKafka(brokers []string, topic string, l *Layout) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			return fmt.Errorf("kafka topic %s: %w", topic, err)
		}
		defer adm.Close()
		admin := kadm.NewClient(adm)
		starts, err := admin.ListStartOffsets(ctx, topic)
		if err == nil {
			err = starts.Error()
		}
		if err != nil {
			return fmt.Errorf("kafka topic %s: list start offsets: %w", topic, err)
		}
		ends, err := admin.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
		if err != nil {
			return fmt.Errorf("kafka topic %s: list end offsets: %w", topic, err)
		}
		if len(ends[topic]) == 0 {
			return fmt.Errorf("kafka topic %s: no such topic", topic)
		}
		from := map[int32]kgo.Offset{}
		end := map[int32]int64{}
		for p, o := range ends[topic] {
			s, _ := starts.Lookup(topic, p)
			if o.Offset > s.Offset {
				from[p] = kgo.NewOffset().At(s.Offset)
				end[p] = o.Offset
			}
		}
		if len(from) == 0 {
			return nil
		}
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}))
		if err != nil {
			return fmt.Errorf("kafka topic %s: %w", topic, err)
		}
		defer cl.Close()
		for len(end) > 0 {
			fs := cl.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				return err
			}
			var ferr error
			fs.EachError(func(t string, p int32, err error) {
				ferr = errors.Join(ferr, fmt.Errorf("partition %d: %w", p, err))
			})
			if ferr != nil {
				return fmt.Errorf("kafka topic %s: fetch: %w", topic, ferr)
			}
			var rerr error
			fs.EachRecord(func(r *kgo.Record) {
				last, ok := end[r.Partition]
				if rerr != nil || !ok || r.Offset >= last {
					return
				}
				if err := kafkaChange(l, r, emit); err != nil {
					rerr = fmt.Errorf("kafka topic %s partition %d offset %d: %w", topic, r.Partition, r.Offset, err)
					return
				}
				if r.Offset+1 >= last {
					delete(end, r.Partition)
				}
			})
			if rerr != nil {
				return rerr
			}
		}
		return nil
	}
}

func kafkaChange(l *Layout, r *kgo.Record, emit func(Change) error) error {
	if r.Value == nil {
		var version int64 = -1
		for _, h := range r.Headers {
			if h.Key == kafkaVersionHeader {
				v, err := parseVersion(string(h.Value))
				if err != nil {
					return err
				}
				version = v
			}
		}
		if version < 0 {
			return fmt.Errorf("tombstone of key %s has no %s header", r.Key, kafkaVersionHeader)
		}
		parts, err := l.ParseName(string(r.Key))
		if err != nil {
			return err
		}
		return emit(Change{Row: l.keyRow(parts), Name: string(r.Key), Delete: true, Version: version})
	}
	e, err := decodeEnvelope(r.Value)
	if err != nil {
		return err
	}
	c, err := l.change(e)
	if err != nil {
		return err
	}
	return emit(c)
}
