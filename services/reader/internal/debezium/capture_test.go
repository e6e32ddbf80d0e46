package debezium

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/capture"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/kafkaconn"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

const (
	testTopic   = "dbserver1.public.customers"
	testGroup   = "oneway-customers"
	testSubject = "oneway.customers.source"
)

// harness runs a Capture against an in-process Kafka (kfake) and publishes
// its pages to an embedded JetStream the way the reader does: in order,
// each page acknowledged before its Commit runs.
type harness struct {
	t       *testing.T
	cluster *kfake.Cluster
	js      jetstream.JetStream
	stream  jetstream.Stream
	group   string
	// tls and sasl reach a secured cluster (nil: plain text, no login).
	tls  *tls.Config
	sasl sasl.Mechanism
}

// transport is a kafka-go transport for the harness's own clients.
func (h *harness) transport() *kafka.Transport {
	return &kafka.Transport{TLS: h.tls, SASL: h.sasl}
}

func newHarness(t *testing.T, partitions int32, opts ...kfake.Opt) *harness {
	cluster, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(partitions, testTopic)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ONEWAY_CUSTOMERS", Subjects: []string{testSubject}})
	require.NoError(t, err)
	return &harness{t: t, cluster: cluster, js: js, stream: st, group: testGroup}
}

func (h *harness) spec() Spec {
	return Spec{
		Brokers: h.cluster.ListenAddrs(), Topic: testTopic, Group: h.group,
		Layout: capture.Layout{Pipeline: "customers", Table: "public.customers", KeyIdx: []int{0}, Budget: 1 << 20,
			Columns: []*onewayv1.Column{{Name: "id", Type: "bigint", Key: true}, {Name: "name", Type: "text"}}},
		BatchSize: 7, Idle: 200 * time.Millisecond, SessionTimeout: 6 * time.Second,
		TLS: h.tls, SASL: h.sasl,
	}
}

// produce writes Debezium events keyed by id, as a connector does.
func (h *harness) produce(events ...string) {
	w := &kafka.Writer{Addr: kafka.TCP(h.cluster.ListenAddrs()...), Topic: testTopic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, Transport: h.transport()}
	defer w.Close()
	var msgs []kafka.Message
	for _, e := range events {
		id, value, _ := strings.Cut(e, "|")
		m := kafka.Message{Key: []byte(`{"id":` + id + `}`)}
		if value != "" {
			m.Value = []byte(value)
		}
		msgs = append(msgs, m)
	}
	require.NoError(h.t, w.WriteMessages(context.Background(), msgs...))
}

func upsertEvent(id int, name string) string {
	return fmt.Sprintf(`%d|{"before":null,"after":{"id":%d,"name":%q},"op":"u","source":{}}`, id, id, name)
}

func deleteEvent(id int) string {
	return fmt.Sprintf(`%d|{"before":{"id":%d,"name":null},"after":null,"op":"d","source":{}}`, id, id)
}

// run runs the capture until it reports being caught up, or until
// stopAfter pages were published (then it returns without that page's
// commit, as a reader killed between the ack and the commit). It
// returns how many batches it published.
func (h *harness) run(stopAfter int) int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last *onewayv1.Batch
	if m, err := h.stream.GetLastMsgForSubject(ctx, testSubject); err == nil {
		last, err = event.Decode(m.Data)
		require.NoError(h.t, err)
	}
	published := 0
	errStop := errors.New("stop")
	err := New(h.spec()).Run(ctx, capture.Position{}, last, func(p capture.Page) error {
		if p.Batch != nil {
			data, err := event.Encode(p.Batch)
			require.NoError(h.t, err)
			_, err = h.js.Publish(ctx, testSubject, data)
			require.NoError(h.t, err)
			published++
			if published == stopAfter {
				return errStop // killed after the ack, before the commit
			}
		}
		if p.Commit != nil {
			require.NoError(h.t, p.Commit(ctx))
		}
		if p.CaughtUp {
			return errStop
		}
		return nil
	})
	require.ErrorIs(h.t, err, errStop)
	return published
}

// subject returns every change on the subject: "partition:offset op id name".
func (h *harness) subject() []*onewayv1.Change {
	ctx := context.Background()
	info, err := h.stream.Info(ctx)
	require.NoError(h.t, err)
	var out []*onewayv1.Change
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := h.stream.GetMsg(ctx, seq)
		require.NoError(h.t, err)
		b, err := event.Decode(m.Data)
		require.NoError(h.t, err)
		require.Equal(h.t, onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, b.GetPattern())
		out = append(out, b.GetChanges()...)
	}
	return out
}

// committed returns the group's committed offsets by partition.
func (h *harness) committed() map[int]int64 {
	cl := &kafka.Client{Addr: kafka.TCP(h.cluster.ListenAddrs()...), Transport: h.transport()}
	of, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: testGroup,
		Topics: map[string][]int{testTopic: {0, 1, 2}}})
	require.NoError(h.t, err)
	out := map[int]int64{}
	for _, p := range of.Topics[testTopic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// ends returns the end offset of each partition.
func (h *harness) ends() map[int]int64 {
	cl := &kafka.Client{Addr: kafka.TCP(h.cluster.ListenAddrs()...), Transport: h.transport()}
	lo, err := cl.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		testTopic: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2)}}})
	require.NoError(h.t, err)
	out := map[int]int64{}
	for _, p := range lo.Topics[testTopic] {
		out[p.Partition] = p.LastOffset
	}
	return out
}

// Events arrive on the subject in offset order per partition (so per key);
// offsets are committed only for pages JetStream acknowledged; a capture
// killed between the ack and the commit is delivered the page's messages
// again by Kafka, and the next term publishes none of them twice.
func TestCaptureCommitsAfterAckAndResumes(t *testing.T) {
	h := newHarness(t, 3)
	var events []string
	for round := range 4 {
		for id := 1; id <= 10; id++ {
			events = append(events, upsertEvent(id, fmt.Sprintf("n%d-%d", id, round)))
		}
	}
	events = append(events, deleteEvent(3), "3|", deleteEvent(7), "7|") // deletes and their tombstones
	for id := 1; id <= 5; id++ {
		events = append(events, upsertEvent(id, fmt.Sprintf("final%d", id)))
	}
	h.produce(events...)
	total := len(events) - 2 // tombstones are not changes

	// First term: killed after its third page was acknowledged.
	require.Equal(t, 3, h.run(3))
	first := h.subject()
	require.NotEmpty(t, first)
	// Committed: the first two pages only, not the third.
	committed := h.committed()
	third := map[int]int64{}
	for _, c := range first {
		var p int
		var o int64
		_, err := fmt.Sscanf(c.GetPosition(), "kafka:%d:%d", &p, &o)
		require.NoError(t, err)
		third[p] = max(third[p], o+1)
	}
	behind := false
	for p, next := range third {
		require.LessOrEqual(t, committed[p], next, "partition %d committed past what was published", p)
		if committed[p] < next {
			behind = true
		}
	}
	require.True(t, behind, "the third page's offsets must not be committed: %v vs published %v", committed, third)

	// Second term: resumes from the committed offsets, publishes the rest.
	h.run(0)
	all := h.subject()
	require.Len(t, all, total, "every change exactly once")
	require.Equal(t, h.ends(), h.committed(), "everything committed once caught up")

	// Per partition (so per key), changes are on the subject in offset order.
	lastOff := map[int]int64{}
	state := map[string]string{}
	for _, c := range all {
		var p int
		var o int64
		_, err := fmt.Sscanf(c.GetPosition(), "kafka:%d:%d", &p, &o)
		require.NoError(t, err)
		if prev, ok := lastOff[p]; ok {
			require.Greater(t, o, prev, "partition %d out of order", p)
		}
		lastOff[p] = o
		vals, err := event.Row(c.GetRow(), nil)
		require.NoError(t, err)
		if c.GetOp() == onewayv1.Op_OP_DELETE {
			delete(state, string(vals[0]))
		} else {
			state[string(vals[0])] = string(vals[1])
		}
	}
	want := map[string]string{"1": "final1", "2": "final2", "4": "final4", "5": "final5", "6": "n6-3", "8": "n8-3", "9": "n9-3", "10": "n10-3", "3": "final3"}
	require.Equal(t, want, state)
}

// Without the last batch (a reader whose subject was purged, say), the
// messages of the uncommitted page are published again: duplicates of the
// same states, in order, which the writers' ledger absorbs.
func TestCaptureRedeliversUncommitted(t *testing.T) {
	h := newHarness(t, 3)
	var events []string
	for id := 1; id <= 20; id++ {
		events = append(events, upsertEvent(id, "a"))
	}
	h.produce(events...)
	require.Equal(t, 1, h.run(1))
	n := len(h.subject())
	require.NoError(t, h.stream.Purge(context.Background()))
	h.run(0)
	require.Len(t, h.subject(), 20, "the uncommitted page's %d changes are read again", n)
	require.Equal(t, h.ends(), h.committed())
}

// A term that does not resume inside the last page (here a new consumer
// group; offsets reset to read the topic again are the same) publishes
// everything it reads, even the offsets the last batch holds.
func TestCaptureRereadsFromAnotherStart(t *testing.T) {
	h := newHarness(t, 3)
	var events []string
	for id := 1; id <= 30; id++ {
		events = append(events, upsertEvent(id, "a"))
	}
	h.produce(events...)
	h.run(0)
	require.Len(t, h.subject(), 30)
	h.group = "oneway-customers-again"
	h.run(0)
	require.Len(t, h.subject(), 60, "a re-read publishes every change again")
}

// A malformed event stops the capture with an error naming topic,
// partition, offset and cause; its offset is not committed.
func TestCaptureStopsOnMalformedEvent(t *testing.T) {
	h := newHarness(t, 1)
	h.produce(upsertEvent(1, "a"), `2|{"op":"c","after":{"id":"two","name":"b"}}`, upsertEvent(3, "c"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := New(h.spec()).Run(ctx, capture.Position{}, nil, func(p capture.Page) error {
		if p.Commit != nil {
			require.NoError(t, p.Commit(ctx))
		}
		return nil
	})
	require.ErrorContains(t, err, "kafka topic "+testTopic+" partition 0 offset 1: malformed change event: column \"id\" (bigint) in \"after\": \"two\" is not a 64-bit integer")
	require.LessOrEqual(t, h.committed()[0], int64(1), "the malformed event is not committed")
}

// TestCaptureFromSecuredBrokers reads a cluster that takes TLS connections
// only and requires a SASL login, with the TLS and SASL kafkaconn builds
// from a kafka source's settings: every event arrives and its offsets are
// committed.
func TestCaptureFromSecuredBrokers(t *testing.T) {
	caFile, srvTLS := testca.New(t, t.TempDir())
	h := newHarness(t, 3, kfake.TLS(srvTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "cdc", "k4fka-source-pw"))
	var err error
	h.tls, h.sasl, err = kafkaconn.Settings(config.KafkaAuth{TLS: config.TLS{CAFile: caFile},
		SASL: config.KafkaSASL{Mechanism: config.SASLSCRAMSHA512, User: "cdc", Password: "k4fka-source-pw"}})
	require.NoError(t, err)
	var events []string
	for id := 1; id <= 20; id++ {
		events = append(events, upsertEvent(id, fmt.Sprintf("name %d", id)))
	}
	h.produce(events...)
	h.run(0)
	require.Len(t, h.subject(), 20)
	committed, ends := h.committed(), h.ends()
	require.Equal(t, ends, committed, "every partition committed to its end")
}
