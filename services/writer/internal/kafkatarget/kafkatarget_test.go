package kafkatarget

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	lt "github.com/oneway-sync/oneway/services/writer/internal/sideledger/ledgertest"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/kafkaconn"
	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

const partitions = 3

// kafkaSink is one topic on its own in-process cluster.
type kafkaSink struct {
	name, topic string
	c           *kfake.Cluster
	tweak       func(*Spec)
}

func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func newSink(t *testing.T, name string) lt.Sink {
	topic := "out-" + name
	return &kafkaSink{name: name, topic: topic, c: newCluster(t, kfake.SeedTopics(partitions, topic))}
}

func (s *kafkaSink) spec(pool *pgxpool.Pool) Spec {
	sp := Spec{Pipeline: "p", Target: s.name, Brokers: s.c.ListenAddrs(), Topic: s.topic,
		Timeout: 2 * time.Second, MaxAttempts: 2, Ledger: pool}
	if s.tweak != nil {
		s.tweak(&sp)
	}
	return sp
}

func (s *kafkaSink) Open(t *testing.T, pool *pgxpool.Pool) lt.Writer {
	t.Helper()
	tg, err := Open(lt.Ctx(t), s.spec(pool), lt.Logger())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

// records reads the whole topic, partition by partition in offset order.
func (s *kafkaSink) records(t *testing.T) []*kgo.Record {
	t.Helper()
	infos := s.c.PartitionInfos(s.topic)
	offsets := map[int32]kgo.Offset{}
	left := map[int32]int64{} // offsets still to read per partition
	for _, p := range infos {
		if p.HighWatermark > p.LogStartOffset {
			offsets[p.Partition] = kgo.NewOffset().AtStart()
			left[p.Partition] = p.HighWatermark - p.LogStartOffset
		}
	}
	if len(left) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.c.ListenAddrs()...), kgo.FetchMaxWait(100*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.topic: offsets}))
	if err != nil {
		t.Fatalf("kgo client: %v", err)
	}
	defer cl.Close()
	byPart := map[int32][]*kgo.Record{}
	ctx := lt.Ctx(t)
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %s: %v (still to read: %v)", s.topic, err, left)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("fetch %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			byPart[r.Partition] = append(byPart[r.Partition], r)
			if left[r.Partition]--; left[r.Partition] <= 0 {
				delete(left, r.Partition)
			}
		})
	}
	var out []*kgo.Record
	for p := range int32(partitions) {
		out = append(out, byPart[p]...)
	}
	return out
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func (s *kafkaSink) Records(t *testing.T) []lt.Record {
	t.Helper()
	var out []lt.Record
	for _, r := range s.records(t) {
		hv, ok := header(r, HeaderVersion)
		v, err := strconv.ParseInt(hv, 10, 64)
		if !ok || err != nil {
			t.Fatalf("record %s/%d@%d: header %s %q", r.Topic, r.Partition, r.Offset, HeaderVersion, hv)
		}
		if r.Value == nil { // a tombstone
			out = append(out, lt.Record{Op: "delete", Key: string(r.Key), Version: v})
			continue
		}
		rec := lt.ParseEnvelope(t, r.Value)
		if rec.Key != string(r.Key) || rec.Version != v || rec.Op != "upsert" {
			t.Errorf("record key %q version %d holds %+v", r.Key, v, rec)
		}
		out = append(out, rec)
	}
	return out
}

func (s *kafkaSink) Down(t *testing.T) { s.c.Close() }

func TestConformance(t *testing.T) {
	lt.Run(t, newSink, true)
}

// TestRecords: keys, tombstones and headers as a consumer sees them, and
// every key on one partition.
func TestRecords(t *testing.T) {
	_, pool := lt.NewLedger(t)
	s := newSink(t, "records").(*kafkaSink)
	w := s.Open(t, pool)
	var items []target.Item
	for seq := uint64(1); seq <= 60; seq++ {
		key := strconv.Itoa(int(seq % 12))
		c := lt.Up(key, fmt.Sprintf("v%d", seq))
		if seq%5 == 0 {
			c = lt.Del(key)
		}
		items = append(items, lt.Item(seq, c))
	}
	for _, it := range items {
		if _, err := w.Apply(lt.Ctx(t), []target.Item{it}); err != nil {
			t.Fatal(err)
		}
	}
	part := map[string]int32{}
	used := map[int32]bool{}
	n := 0
	for _, r := range s.records(t) {
		n++
		if p, ok := part[string(r.Key)]; ok && p != r.Partition {
			t.Errorf("key %s on partitions %d and %d", r.Key, p, r.Partition)
		}
		part[string(r.Key)] = r.Partition
		used[r.Partition] = true
		hv, _ := header(r, HeaderVersion)
		if r.Value == nil {
			if r.Key == nil || hv == "" {
				t.Errorf("tombstone without key or version: %+v", r)
			}
			continue
		}
		if !strings.Contains(string(r.Value), `"version":`+hv+`}`) {
			t.Errorf("record %s: value %s, header version %s", r.Key, r.Value, hv)
		}
	}
	if n != len(items) {
		t.Errorf("%d records, want %d", n, len(items))
	}
	if len(used) < 2 {
		t.Errorf("12 keys all on partitions %v: not spread by key", used)
	}
}

// TestRejections: a record too large for the client or for the topic is
// rejected for good while the rest of the batch is produced; a missing
// topic is an outage.
func TestRejections(t *testing.T) {
	_, pool := lt.NewLedger(t)
	big := strings.Repeat("x", 4000)
	items := []target.Item{lt.Item(1, lt.Up("1", big), lt.Up("2", "small"), lt.Del("3"))}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *kafkaSink)
	}{
		{"over BatchBytes", func(t *testing.T, s *kafkaSink) {
			s.tweak = func(sp *Spec) { sp.BatchBytes = 2000 }
		}},
		{"over the topic's max.message.bytes", func(t *testing.T, s *kafkaSink) {
			s.topic = "small-" + s.name
			if err := s.c.CreateTopic(s.topic, partitions, map[string]string{"max.message.bytes": "2000"}); err != nil {
				t.Fatalf("create topic: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(t, strings.ReplaceAll(tc.name, " ", "-")).(*kafkaSink)
			tc.setup(t, s)
			w := s.Open(t, pool)
			for round := range 2 {
				res, err := w.Apply(lt.Ctx(t), items)
				if err != nil {
					t.Fatalf("round %d: apply: %v", round, err)
				}
				if len(res.Failed) != 1 || res.Failed[0].Key != "1" || !errs.IsPermanent(res.Failed[0].Err) {
					t.Fatalf("round %d: failed %v, want key 1, permanent", round, res.Failed)
				}
				t.Logf("rejected: %v", res.Failed[0].Err)
				var keys []string
				for _, r := range s.Records(t) {
					keys = append(keys, r.Op+":"+r.Key)
				}
				slices.Sort(keys)
				if strings.Join(keys, " ") != "delete:3 upsert:2" {
					t.Errorf("round %d: topic holds %v", round, keys)
				}
				if v, _ := lt.LedgerVersion(t, pool, w, "1"); v != -1 {
					t.Errorf("ledger of the rejected key at %d", v)
				}
			}
		})
	}
	t.Run("missing topic", func(t *testing.T) {
		s := newSink(t, "missing").(*kafkaSink)
		s.topic = "no-such-topic"
		w := s.Open(t, pool)
		_, err := w.Apply(lt.Ctx(t), items)
		if !errs.IsUnavailable(err) {
			t.Fatalf("error %v, want Unavailable", err)
		}
		t.Logf("missing topic: %v", err)
	})
}

// TestPoisonAmongConcurrentApplies: records of concurrent Applies may
// share a partition's produce request, which the broker accepts or
// rejects whole. A record rejected for good must reject no record of
// another Apply: each Apply sends a poison record (over the topic's
// max.message.bytes) alongside innocent ones, rounds after rounds, and only
// the poison records fail.
func TestPoisonAmongConcurrentApplies(t *testing.T) {
	_, pool := lt.NewLedger(t)
	s := newSink(t, "concurrent").(*kafkaSink)
	s.topic = "one-partition"
	if err := s.c.CreateTopic(s.topic, 1, map[string]string{"max.message.bytes": "3000"}); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	w := s.Open(t, pool)
	big := strings.Repeat("x", 4000)
	const workers, rounds = 4, 25
	errc := make(chan error, workers)
	for g := range workers {
		go func() {
			for r := range rounds {
				k := func(i int) string { return fmt.Sprintf("%d-%d-%d", g, r, i) }
				item := lt.Item(uint64(1+r), lt.Up(k(0), big), lt.Up(k(1), "a"), lt.Up(k(2), "b"))
				res, err := w.Apply(lt.Ctx(t), []target.Item{item})
				if err != nil {
					errc <- fmt.Errorf("worker %d round %d: %w", g, r, err)
					return
				}
				if len(res.Failed) != 1 || res.Failed[0].Key != k(0) {
					var keys []string
					for _, f := range res.Failed {
						keys = append(keys, f.Key+": "+f.Err.Error())
					}
					errc <- fmt.Errorf("worker %d round %d: rejected %v, want only %s", g, r, keys, k(0))
					return
				}
			}
			errc <- nil
		}()
	}
	for range workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.records(t)); n != workers*rounds*2 {
		t.Fatalf("topic holds %d records, want %d", n, workers*rounds*2)
	}
}

// TestCancel: Apply returns at once when ctx ends, and the
// ledger keeps the keys locked until the records in flight settle.
func TestCancel(t *testing.T) {
	_, pool := lt.NewLedger(t)
	s := newSink(t, "cancel").(*kafkaSink)
	w := s.Open(t, pool)
	// Hold produce requests until the test lets them go.
	release := make(chan struct{})
	s.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		s.c.SleepControl(func() { <-release })
		return nil, nil, false // then handled as usual
	})
	ctx, cancel := context.WithCancel(lt.Ctx(t))
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := w.Apply(ctx, []target.Item{lt.Item(1, lt.Up("1", "a"))})
	if err == nil || ctx.Err() == nil {
		t.Fatalf("apply: %v, want canceled", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("returned after %v", el)
	}
	// The ledger transaction, and so the key's lock, is still open.
	idleTx := func() int64 {
		var n int64
		if err := pool.QueryRow(lt.Ctx(t), `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	time.Sleep(200 * time.Millisecond)
	if n := idleTx(); n != 1 {
		t.Fatalf("%d ledger transactions open while the record is in flight, want 1", n)
	}
	close(release)
	for deadline := time.Now().Add(10 * time.Second); idleTx() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the ledger transaction stays open after the record settled")
		}
	}
	other := s.Open(t, pool)
	if _, err := other.Apply(lt.Ctx(t), []target.Item{lt.Item(2, lt.Up("1", "b"))}); err != nil {
		t.Fatalf("second writer: %v", err)
	}
	var versions []int64
	for _, r := range s.Records(t) {
		versions = append(versions, r.Version)
	}
	if len(versions) == 0 || versions[len(versions)-1] != target.Version(2, 0) {
		t.Errorf("versions %v: the last must be the second writer's", versions)
	}
}

// TestSecuredBrokers produces to a cluster that takes TLS connections only
// and requires a SASL login, with each mechanism the config offers: the
// transport kafkaconn builds from the target's settings writes every
// record; a wrong password fails the apply without showing it.
func TestSecuredBrokers(t *testing.T) {
	_, pool := lt.NewLedger(t)
	caFile, srvTLS := testca.New(t, t.TempDir())
	for _, tc := range []struct{ mechanism, kfake string }{
		{config.SASLPlain, "PLAIN"},
		{config.SASLSCRAMSHA256, "SCRAM-SHA-256"},
		{config.SASLSCRAMSHA512, "SCRAM-SHA-512"},
	} {
		t.Run(tc.mechanism, func(t *testing.T) {
			const password = "k4fka-target-pw"
			topic := "secured-" + strings.ReplaceAll(tc.mechanism, "-", "")
			c := newCluster(t, kfake.TLS(srvTLS), kfake.EnableSASL(), kfake.Superuser(tc.kfake, "sink", password),
				kfake.SeedTopics(partitions, topic))
			open := func(t *testing.T, target, pass string) *Target {
				t.Helper()
				tr, err := kafkaconn.Transport(config.KafkaAuth{TLS: config.TLS{CAFile: caFile},
					SASL: config.KafkaSASL{Mechanism: tc.mechanism, User: "sink", Password: config.Opaque(pass)}}, "test", 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(tr.CloseIdleConnections)
				tg, err := Open(lt.Ctx(t), Spec{Pipeline: "p", Target: target, Brokers: c.ListenAddrs(), Topic: topic,
					Timeout: 2 * time.Second, MaxAttempts: 2, Transport: tr, Ledger: pool}, lt.Logger())
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				t.Cleanup(func() { _ = tg.Close() })
				return tg
			}
			res, err := open(t, "ok_"+topic[8:], password).Apply(lt.Ctx(t), []target.Item{lt.Item(1, lt.Up("1", "a"), lt.Up("2", "b"), lt.Del("3"))})
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if res.Written != 2 || res.Deleted != 1 {
				t.Fatalf("result %+v, want 2 written and 1 deleted", res)
			}
			var n int64
			for _, p := range c.PartitionInfos(topic) {
				n += p.HighWatermark - p.LogStartOffset
			}
			if n != 3 {
				t.Fatalf("the topic holds %d records, want 3", n)
			}
			_, err = open(t, "bad_"+topic[8:], "not-"+password).Apply(lt.Ctx(t), []target.Item{lt.Item(2, lt.Up("4", "d"))})
			if err == nil {
				t.Fatal("a wrong password was accepted")
			}
			if strings.Contains(err.Error(), password) {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}
