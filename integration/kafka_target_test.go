package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// A Kafka topic as a target, over the real Kafka protocol (kfake, in
// process; the writer is a separate process): every key's last record is
// its newest state, keyed by the record key, after a load and updates.
func TestKafkaTarget(t *testing.T) {
	const topic, partitions = "invoices", 3
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	ledger := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 1000)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, fmt.Sprintf(`  - name: topic
    kind: kafka
    url: %q
    ledger_url: %q
    kafka: {topic: %s}
`, strings.Join(cluster.ListenAddrs(), ","), ledger, topic))
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	writer := testenv.Start(t, "writer", "run", "--config", cfg)

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	wait := func(wantPaid int64) {
		t.Helper()
		testenv.WaitFor(t, syncTimeout, func() error {
			if err := countIs(dst, 1000); err != nil {
				return err
			}
			if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != wantPaid {
				return fmt.Errorf("postgres target has %d paid rows", n)
			}
			c, err := js.Consumer(ctx, bus.StreamName("invoices"), bus.WriterConsumer("invoices", "topic"))
			if err != nil {
				return err
			}
			info, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if n := info.NumPending + uint64(info.NumAckPending); n > 0 || info.Delivered.Stream == 0 {
				return fmt.Errorf("kafka target: %d pending", n)
			}
			return nil
		})
	}
	wait(0)
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id <= 50")
	wait(50)
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)

	// Read the whole topic; the last record of each key is its newest state.
	last := map[string]envelope{}
	partitionOf := map[string]int32{}
	for _, r := range readTopic(t, cluster, topic) {
		var e envelope
		if err := json.Unmarshal(r.Value, &e); err != nil {
			t.Fatalf("record %s: %v", r.Key, err)
		}
		if string(r.Key) != e.Key {
			t.Fatalf("record key %q, envelope key %q", r.Key, e.Key)
		}
		if p, ok := partitionOf[e.Key]; ok && p != r.Partition {
			t.Fatalf("key %s on partitions %d and %d: per-key order is lost", e.Key, p, r.Partition)
		}
		partitionOf[e.Key] = r.Partition
		if prev, ok := last[e.Key]; ok && prev.Version >= e.Version {
			t.Fatalf("key %s: version %d after %d", e.Key, e.Version, prev.Version)
		}
		last[e.Key] = e
	}
	if len(last) != 1000 {
		t.Fatalf("%d keys in the topic, want 1000", len(last))
	}
	paid := 0
	for _, e := range last {
		if e.Fields["status"] == "paid" {
			paid++
		}
	}
	if paid != 50 {
		t.Fatalf("%d keys paid in the topic, want 50", paid)
	}
	// verify folds the topic and compares it.
	if out := mustVerify(t, cfg, 0).Stdout; !strings.Contains(out, "target topic (topic invoices): OK  source_rows=1000 target_rows=1000") {
		t.Fatalf("verify does not compare the topic:\n%s", out)
	}
}

// readTopic reads every record of a kfake topic, partition by partition in
// offset order.
func readTopic(t *testing.T, cluster *kfake.Cluster, topic string) []*kgo.Record {
	t.Helper()
	var total int64
	offsets := map[int32]kgo.Offset{}
	for _, p := range cluster.PartitionInfos(topic) {
		offsets[p.Partition] = kgo.NewOffset().AtStart()
		total += p.HighWatermark - p.LogStartOffset
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.FetchMaxWait(100*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var records []*kgo.Record
	for int64(len(records)) < total {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read topic %s: %v after %d of %d records", topic, ctx.Err(), len(records), total)
		}
		fs.EachRecord(func(r *kgo.Record) { records = append(records, r) })
	}
	return records
}
