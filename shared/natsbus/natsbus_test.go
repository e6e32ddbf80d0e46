package natsbus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

func TestConnect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error  // errors.Is target, if any
		wantMsg string // substring of the error
	}{
		{
			name:    "no URL",
			url:     "",
			ctx:     func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			wantMsg: "no URL configured",
		},
		{
			name: "no server before ctx ends",
			// Port 1 on loopback: nothing listens, connects are refused.
			url: "nats://127.0.0.1:1",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 300*time.Millisecond)
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := tc.ctx()
			defer cancel()
			b, err := natsbus.Connect(ctx, tc.url, "test", newLogger(t))
			if err == nil {
				b.Close()
				t.Fatal("Connect succeeded, want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Connect error = %v, want it to wrap %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Connect error = %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestEnsureStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		spec         natsbus.StreamSpec
		update       *natsbus.StreamSpec // second call; nil repeats spec
		wantName     string
		wantMaxBytes int64
		wantDupes    time.Duration
	}{
		{
			name:         "defaults",
			spec:         natsbus.StreamSpec{Pipeline: "orders", DuplicateWindow: 30 * time.Second},
			wantName:     "ONEWAY_ORDERS",
			wantMaxBytes: -1,
			wantDupes:    30 * time.Second,
		},
		{
			name:         "limits",
			spec:         natsbus.StreamSpec{Pipeline: "crm-sync", MaxBytes: 64 << 20, MaxAge: time.Hour, Replicas: 1, DuplicateWindow: 2 * time.Minute},
			wantName:     "ONEWAY_CRM-SYNC",
			wantMaxBytes: 64 << 20,
			wantDupes:    2 * time.Minute,
		},
		{
			name:         "second call updates limits",
			spec:         natsbus.StreamSpec{Pipeline: "billing", MaxBytes: 1 << 20, DuplicateWindow: time.Minute},
			update:       &natsbus.StreamSpec{Pipeline: "billing", MaxBytes: 2 << 20, DuplicateWindow: 5 * time.Minute},
			wantName:     "ONEWAY_BILLING",
			wantMaxBytes: 2 << 20,
			wantDupes:    5 * time.Minute,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			if _, err := b.EnsureStream(ctx, tc.spec); err != nil {
				t.Fatalf("first EnsureStream: %v", err)
			}
			second := tc.spec
			if tc.update != nil {
				second = *tc.update
			}
			st, err := b.EnsureStream(ctx, second)
			if err != nil {
				t.Fatalf("second EnsureStream: %v", err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatalf("stream info: %v", err)
			}
			cfg := info.Config
			if cfg.Name != tc.wantName {
				t.Errorf("Name = %q, want %q", cfg.Name, tc.wantName)
			}
			if want := bus.StreamSubjects(tc.spec.Pipeline); len(cfg.Subjects) != 1 || cfg.Subjects[0] != want[0] {
				t.Errorf("Subjects = %v, want %v", cfg.Subjects, want)
			}
			if cfg.Storage != jetstream.FileStorage {
				t.Errorf("Storage = %v, want file", cfg.Storage)
			}
			if cfg.Retention != jetstream.LimitsPolicy {
				t.Errorf("Retention = %v, want limits", cfg.Retention)
			}
			if cfg.Discard != jetstream.DiscardNew {
				t.Errorf("Discard = %v, want DiscardNew", cfg.Discard)
			}
			if cfg.Duplicates != tc.wantDupes {
				t.Errorf("Duplicates = %v, want %v", cfg.Duplicates, tc.wantDupes)
			}
			if cfg.MaxBytes != tc.wantMaxBytes {
				t.Errorf("MaxBytes = %d, want %d", cfg.MaxBytes, tc.wantMaxBytes)
			}
			if cfg.MaxAge != second.MaxAge {
				t.Errorf("MaxAge = %v, want %v", cfg.MaxAge, second.MaxAge)
			}
			if cfg.Replicas != 1 {
				t.Errorf("Replicas = %d, want 1", cfg.Replicas)
			}
			names := b.JS.StreamNames(ctx)
			var n int
			for range names.Name() {
				n++
			}
			if n != 1 {
				t.Errorf("%d streams exist after two EnsureStream calls, want 1", n)
			}
		})
	}
}

// A full stream must refuse a publish (DiscardNew), never make room by
// dropping the oldest, unconsumed messages.
func TestEnsureStreamFullRefusesPublish(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		publish func(ctx context.Context, b *natsbus.Bus, subject string, data []byte, id string) error
	}{
		{
			name: "PublishMsg",
			publish: func(ctx context.Context, b *natsbus.Bus, subject string, data []byte, id string) error {
				_, err := b.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data}, id)
				return err
			},
		},
		{
			name: "PublishAsync",
			publish: func(ctx context.Context, b *natsbus.Bus, subject string, data []byte, id string) error {
				f, err := b.PublishAsync(ctx, subject, data, id)
				if err != nil {
					return err
				}
				select {
				case <-f.Ok():
					return nil
				case err := <-f.Err():
					return err
				case <-ctx.Done():
					return ctx.Err()
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st, err := b.EnsureStream(ctx, natsbus.StreamSpec{Pipeline: "tiny", MaxBytes: 4096, DuplicateWindow: time.Minute})
			if err != nil {
				t.Fatalf("EnsureStream: %v", err)
			}
			subject := bus.SourceSubject("tiny")
			payload := func(i int) []byte { return []byte(fmt.Sprintf("%04d:%s", i, strings.Repeat("x", 200))) }

			var stored int
			var refused error
			for i := 1; i <= 100 && refused == nil; i++ {
				if err := tc.publish(ctx, b, subject, payload(i), fmt.Sprintf("id-%d", i)); err != nil {
					refused = err
					break
				}
				stored++
			}
			if refused == nil {
				t.Fatalf("100 publishes of 200 bytes into a 4 KiB stream all succeeded; want a refusal")
			}
			if stored == 0 {
				t.Fatalf("the first publish was refused: %v", refused)
			}
			t.Logf("stored %d messages, then: %v", stored, refused)

			// Refused again while still full.
			if err := tc.publish(ctx, b, subject, payload(999), "id-999"); err == nil {
				t.Errorf("a publish into the full stream succeeded")
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatalf("stream info: %v", err)
			}
			if info.State.Msgs != uint64(stored) || info.State.FirstSeq != 1 || info.State.LastSeq != uint64(stored) {
				t.Errorf("stream state msgs=%d first=%d last=%d, want msgs=%d first=1 last=%d",
					info.State.Msgs, info.State.FirstSeq, info.State.LastSeq, stored, stored)
			}
			for seq := 1; seq <= stored; seq++ {
				m, err := st.GetMsg(ctx, uint64(seq))
				if err != nil {
					t.Fatalf("old message %d is gone: %v", seq, err)
				}
				if !bytes.Equal(m.Data, payload(seq)) {
					t.Errorf("message %d = %q, want %q", seq, m.Data, payload(seq))
				}
			}
		})
	}
}

func TestEnsureConsumer(t *testing.T) {
	t.Parallel()
	b := newBus(t)
	ctx := testCtx(t)
	pipelineStream(t, b, "orders")
	spec := natsbus.ConsumerSpec{
		Stream:        bus.StreamName("orders"),
		Durable:       bus.WriterConsumer("orders", "pg"),
		FilterSubject: bus.SourceSubject("orders"),
		AckWait:       7 * time.Second,
		MaxAckPending: 64,
	}
	for i := range 2 { // idempotent
		c, err := b.EnsureConsumer(ctx, spec)
		if err != nil {
			t.Fatalf("EnsureConsumer #%d: %v", i+1, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		cfg := info.Config
		if cfg.Durable != spec.Durable || cfg.FilterSubject != spec.FilterSubject {
			t.Errorf("durable %q filter %q, want %q %q", cfg.Durable, cfg.FilterSubject, spec.Durable, spec.FilterSubject)
		}
		if cfg.AckPolicy != jetstream.AckExplicitPolicy {
			t.Errorf("AckPolicy = %v, want explicit", cfg.AckPolicy)
		}
		if cfg.AckWait != spec.AckWait {
			t.Errorf("AckWait = %v, want %v", cfg.AckWait, spec.AckWait)
		}
		if cfg.MaxDeliver != -1 {
			t.Errorf("MaxDeliver = %d, want -1 (unlimited)", cfg.MaxDeliver)
		}
		if cfg.MaxAckPending != spec.MaxAckPending {
			t.Errorf("MaxAckPending = %d, want %d", cfg.MaxAckPending, spec.MaxAckPending)
		}
		if cfg.DeliverPolicy != jetstream.DeliverAllPolicy {
			t.Errorf("DeliverPolicy = %v, want all", cfg.DeliverPolicy)
		}
	}
}

func TestPublishAsyncDeduplicates(t *testing.T) {
	t.Parallel()
	type pub struct {
		id            string
		data          string
		wantDuplicate bool
	}
	tests := []struct {
		name     string
		pubs     []pub
		wantMsgs uint64
	}{
		{
			name:     "same id twice",
			pubs:     []pub{{id: "row-1@v1", data: "a"}, {id: "row-1@v1", data: "a", wantDuplicate: true}},
			wantMsgs: 1,
		},
		{
			name:     "same id, different payload, is still a duplicate",
			pubs:     []pub{{id: "row-1@v1", data: "a"}, {id: "row-1@v1", data: "b", wantDuplicate: true}},
			wantMsgs: 1,
		},
		{
			name:     "different ids",
			pubs:     []pub{{id: "row-1@v1", data: "a"}, {id: "row-1@v2", data: "a"}},
			wantMsgs: 2,
		},
		{
			name: "retry storm",
			pubs: []pub{
				{id: "x", data: "1"}, {id: "x", data: "1", wantDuplicate: true},
				{id: "y", data: "2"}, {id: "x", data: "1", wantDuplicate: true},
				{id: "y", data: "2", wantDuplicate: true},
			},
			wantMsgs: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st := pipelineStream(t, b, "dedupe")
			for i, p := range tc.pubs {
				f, err := b.PublishAsync(ctx, bus.SourceSubject("dedupe"), []byte(p.data), p.id)
				if err != nil {
					t.Fatalf("publish #%d: %v", i+1, err)
				}
				select {
				case ack := <-f.Ok():
					if ack.Duplicate != p.wantDuplicate {
						t.Errorf("publish #%d (id %q): Duplicate = %v, want %v", i+1, p.id, ack.Duplicate, p.wantDuplicate)
					}
				case err := <-f.Err():
					t.Fatalf("publish #%d: ack error %v", i+1, err)
				case <-ctx.Done():
					t.Fatalf("publish #%d: no ack", i+1)
				}
			}
			n, err := streamMsgs(ctx, st)
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.wantMsgs {
				t.Errorf("stream holds %d messages, want %d", n, tc.wantMsgs)
			}
		})
	}
}

// Publishing far more than MaxPendingAsync in a tight loop must neither fail
// nor drop: PublishAsync waits out the stall.
func TestPublishAsyncWaitsOutStall(t *testing.T) {
	t.Parallel()
	const total = 20_000
	b := newBus(t)
	ctx := testCtx(t)
	st := pipelineStream(t, b, "bulk")
	subject := bus.SourceSubject("bulk")

	futures := make([]jetstream.PubAckFuture, 0, total)
	maxPending := 0
	start := time.Now()
	for i := range total {
		f, err := b.PublishAsync(ctx, subject, []byte(fmt.Sprintf(`{"n":%d}`, i)), fmt.Sprintf("bulk-%d", i))
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		futures = append(futures, f)
		maxPending = max(maxPending, b.JS.PublishAsyncPending())
	}
	select {
	case <-b.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatalf("acks still pending: %d", b.JS.PublishAsyncPending())
	}
	t.Logf("published %d in %v; peak pending %d (window %d)", total, time.Since(start), maxPending, natsbus.MaxPendingAsync)
	if maxPending > natsbus.MaxPendingAsync {
		t.Errorf("peak pending acks %d exceeds the window %d", maxPending, natsbus.MaxPendingAsync)
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				t.Fatalf("publish %d acked as a duplicate", i)
			}
		case err := <-f.Err():
			t.Fatalf("publish %d: %v", i, err)
		case <-ctx.Done():
			t.Fatalf("publish %d: no ack", i)
		}
	}
	n, err := streamMsgs(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if n != total {
		t.Errorf("stream holds %d messages, want %d", n, total)
	}
}

func TestStateKV(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		key    string
		values []string // put in order; Get must return the last
	}{
		{name: "reader position", key: bus.ReaderPositionKey("orders", "left"), values: []string{`{"lsn":"0/16B3748"}`}},
		{name: "overwrite", key: bus.ReaderPositionKey("orders", "right"), values: []string{"1", "2", "3"}},
		{name: "binary value", key: "lease.orders", values: []string{"\x00\x01\xff"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			kv, err := b.StateKV(ctx, 0)
			if err != nil {
				t.Fatalf("StateKV: %v", err)
			}
			var rev uint64
			for _, v := range tc.values {
				if rev, err = kv.Put(ctx, tc.key, []byte(v)); err != nil {
					t.Fatalf("Put: %v", err)
				}
			}
			// A second open (another service starting) sees the same data.
			kv2, err := b.StateKV(ctx, 1)
			if err != nil {
				t.Fatalf("second StateKV: %v", err)
			}
			e, err := kv2.Get(ctx, tc.key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if want := tc.values[len(tc.values)-1]; string(e.Value()) != want {
				t.Errorf("Get = %q, want %q", e.Value(), want)
			}
			if e.Revision() != rev {
				t.Errorf("revision = %d, want %d", e.Revision(), rev)
			}
			if _, err := kv2.Get(ctx, tc.key+".missing"); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("Get of a missing key: %v, want ErrKeyNotFound", err)
			}
			status, err := kv2.Status(ctx)
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if status.Bucket() != bus.StateBucket || status.History() != 5 {
				t.Errorf("bucket %q history %d, want %q 5", status.Bucket(), status.History(), bus.StateBucket)
			}
			if got := status.Config().Storage; got != jetstream.FileStorage {
				t.Errorf("storage = %v, want file", got)
			}
		})
	}
}

// DeadLetter's Msg-Id makes re-dead-lettering one message on one subject a
// duplicate, and nothing else.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	const p = "dl"
	type call struct {
		subject string
		headers map[string]string
	}
	seq7 := map[string]string{bus.HeaderSequence: "7", bus.HeaderKey: "id=1"}
	tests := []struct {
		name  string
		calls []call
		want  map[string]int // messages stored per subject
	}{
		{
			name:  "same message twice on one subject is stored once",
			calls: []call{{bus.DLQSubject(p, "pg"), seq7}, {bus.DLQSubject(p, "pg"), seq7}},
			want:  map[string]int{bus.DLQSubject(p, "pg"): 1},
		},
		{
			name: "different sequences are distinct",
			calls: []call{
				{bus.DLQSubject(p, "pg"), seq7},
				{bus.DLQSubject(p, "pg"), map[string]string{bus.HeaderSequence: "8", bus.HeaderKey: "id=1"}},
			},
			want: map[string]int{bus.DLQSubject(p, "pg"): 2},
		},
		{
			name:  "without a sequence nothing is deduplicated",
			calls: []call{{bus.DLQSubject(p, "pg"), nil}, {bus.DLQSubject(p, "pg"), nil}},
			want:  map[string]int{bus.DLQSubject(p, "pg"): 2},
		},
		{
			// Two targets of one pipeline share the pipeline's stream and so
			// its duplicate window: both dead letters must be kept.
			name: "same message on two targets' subjects is stored on both",
			calls: []call{
				{bus.DLQSubject(p, "pg"), seq7},
				{bus.DLQSubject(p, "mysql"), seq7},
			},
			want: map[string]int{bus.DLQSubject(p, "pg"): 1, bus.DLQSubject(p, "mysql"): 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st := pipelineStream(t, b, p)
			for i, c := range tc.calls {
				if err := b.DeadLetter(ctx, c.subject, []byte("payload"), errors.New("boom\r\nline two"), c.headers); err != nil {
					t.Fatalf("DeadLetter #%d: %v", i+1, err)
				}
			}
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.StreamSubjects(p)[0]))
			if err != nil {
				t.Fatalf("stream info: %v", err)
			}
			for subj, want := range tc.want {
				if got := info.State.Subjects[subj]; got != uint64(want) {
					t.Errorf("%s holds %d dead letters, want %d", subj, got, want)
				}
				if want == 0 {
					continue
				}
				m, err := st.GetLastMsgForSubject(ctx, subj)
				if err != nil {
					t.Fatalf("get %s: %v", subj, err)
				}
				if got := m.Header.Get(bus.HeaderError); got != "boom  line two" {
					t.Errorf("%s = %q, want the sanitized error %q", bus.HeaderError, got, "boom  line two")
				}
				if string(m.Data) != "payload" {
					t.Errorf("data = %q, want %q", m.Data, "payload")
				}
			}
		})
	}
}
