package verify

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/oneway-sync/oneway/shared/config"
)

// kafkaVersionHeader is the record header holding a change's version.
const kafkaVersionHeader = "oneway-version"

// kafkaAuthOptions are the franz-go client options of a's TLS and SASL.
func kafkaAuthOptions(a config.KafkaAuth) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tlsCfg, err := a.TLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kafka TLS: %w", err)
	}
	if tlsCfg != nil {
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	s := a.SASL
	switch s.Mechanism {
	case "":
	case config.SASLPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: s.User, Pass: s.Password.Value()}.AsMechanism()))
	case config.SASLSCRAMSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: s.User, Pass: s.Password.Value()}.AsSha256Mechanism()))
	case config.SASLSCRAMSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: s.User, Pass: s.Password.Value()}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka SASL: unsupported mechanism %q", s.Mechanism)
	}
	return opts, nil
}

// ScanKafka is a Scan of a Kafka target's topic: every partition from its
// start offset to the end offset it had when the scan began. A record
// with a value is a change envelope; a tombstone (no value) deletes its
// key (the record key), at the version in its oneway-version header. auth
// is the target's TLS and SASL.
func ScanKafka(brokers []string, topic string, auth config.KafkaAuth, l *Layout) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		authOpts, err := kafkaAuthOptions(auth)
		if err != nil {
			return fmt.Errorf("kafka topic %s: %w", topic, err)
		}
		adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, authOpts...)...)
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
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from})}, authOpts...)...)
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
