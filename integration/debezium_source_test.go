package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

const debeziumTopic = "dbserver1.public.customers"

// customer is one row of the model the events describe.
type customer struct {
	name    string
	cents   int64
	active  bool
	bornOn  int // days since 1970-01-01
	updated time.Time
}

// debeziumFeed writes Debezium events (as the PostgreSQL connector with the
// JSON converter does) and keeps the state they describe.
type debeziumFeed struct {
	t     *testing.T
	cl    *kgo.Client
	rng   *rand.Rand
	state map[int]customer
	clock time.Time
}

func (f *debeziumFeed) after(id int, c customer, schema bool) map[string]any {
	m := map[string]any{"id": id, "name": c.name, "active": c.active, "born_on": c.bornOn,
		"updated_at": c.updated.Format("2006-01-02T15:04:05.000000Z07:00")}
	if schema {
		b := big.NewInt(c.cents).Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		m["balance"] = base64.StdEncoding.EncodeToString(b)
	} else {
		m["balance"] = fmt.Sprintf("%d.%02d", c.cents/100, c.cents%100)
	}
	return m
}

const customerRecordSchema = `{"type":"struct","optional":true,"fields":[
 {"field":"id","type":"int64"},{"field":"name","type":"string","optional":true},
 {"field":"balance","type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"12"}},
 {"field":"active","type":"boolean","optional":true},
 {"field":"born_on","type":"int32","optional":true,"name":"io.debezium.time.Date"},
 {"field":"updated_at","type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp"}]}`

// record is the Kafka record of one event; before/after may be nil.
func (f *debeziumFeed) record(op string, id int, before, after map[string]any, schema bool) *kgo.Record {
	payload := map[string]any{"op": op, "before": before, "after": after, "ts_ms": f.clock.UnixMilli(),
		"source": map[string]any{"connector": "postgresql", "name": "dbserver1", "schema": "public", "table": "customers"}}
	var value []byte
	var err error
	if schema {
		rec := strings.Replace(customerRecordSchema, `{"type":"struct"`, `{"field":"%s","type":"struct"`, 1)
		env := fmt.Sprintf(`{"type":"struct","name":"dbserver1.public.customers.Envelope","fields":[%s,%s,
 {"field":"source","type":"struct","fields":[]},{"field":"op","type":"string"},{"field":"ts_ms","type":"int64","optional":true}]}`,
			fmt.Sprintf(rec, "before"), fmt.Sprintf(rec, "after"))
		p, _ := json.Marshal(payload)
		value = []byte(`{"schema":` + env + `,"payload":` + string(p) + `}`)
	} else {
		value, err = json.Marshal(payload)
		if err != nil {
			f.t.Fatal(err)
		}
	}
	return &kgo.Record{Topic: debeziumTopic, Key: []byte(fmt.Sprintf(`{"id":%d}`, id)), Value: value}
}

// events makes n random changes (snapshot reads when snapshot is true):
// creates, updates, deletes followed by tombstones, re-creates of deleted
// keys; half with the schema wrapper.
func (f *debeziumFeed) events(n int, snapshot bool, ids int, tag string) {
	var recs []*kgo.Record
	for range n {
		f.clock = f.clock.Add(1237 * time.Microsecond)
		id := 1 + f.rng.IntN(ids)
		schema := f.rng.IntN(2) == 0
		old, exists := f.state[id]
		c := customer{name: fmt.Sprintf("%s-%d-%d", tag, id, f.rng.IntN(1000)), cents: f.rng.Int64N(1_000_000),
			active: f.rng.IntN(2) == 0, bornOn: f.rng.IntN(20000) - 5000, updated: f.clock}
		switch {
		case snapshot:
			recs = append(recs, f.record("r", id, nil, f.after(id, c, schema), schema))
		case !exists:
			recs = append(recs, f.record("c", id, nil, f.after(id, c, schema), schema))
		case f.rng.IntN(8) == 0:
			recs = append(recs, f.record("d", id, f.after(id, old, schema), nil, schema),
				&kgo.Record{Topic: debeziumTopic, Key: []byte(fmt.Sprintf(`{"id":%d}`, id))}) // the tombstone
			delete(f.state, id)
			continue
		default:
			recs = append(recs, f.record("u", id, f.after(id, old, schema), f.after(id, c, schema), schema))
		}
		f.state[id] = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		f.t.Fatalf("produce: %v", err)
	}
}

// check compares the target table with the state the events describe.
func (f *debeziumFeed) check(dst *testenv.DB) error {
	rows, err := dst.Conn.Query(context.Background(), `SELECT id, name, balance::text, active, born_on::text,
		to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') FROM public.customers`)
	if err != nil {
		return err
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id int
		var name, balance, born, updated string
		var active bool
		if err := rows.Scan(&id, &name, &balance, &active, &born, &updated); err != nil {
			return err
		}
		c, ok := f.state[id]
		if !ok {
			return fmt.Errorf("id %d is in the target but was deleted", id)
		}
		seen++
		want := []string{c.name, fmt.Sprintf("%d.%02d", c.cents/100, c.cents%100), fmt.Sprint(c.active),
			time.Unix(int64(c.bornOn)*86400, 0).UTC().Format("2006-01-02"), c.updated.UTC().Format("2006-01-02T15:04:05.000000")}
		got := []string{name, balance, fmt.Sprint(active), born, updated}
		if strings.Join(want, "|") != strings.Join(got, "|") {
			return fmt.Errorf("id %d: target has %q, want %q", id, got, want)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if seen != len(f.state) {
		return fmt.Errorf("the target has %d of %d rows", seen, len(f.state))
	}
	return nil
}

// A Kafka topic of Debezium events (snapshot reads, creates, updates,
// deletes with tombstones; with and without the schema wrapper) synced
// into PostgreSQL; `oneway up` killed with SIGKILL mid-run and restarted.
// The target ends equal to the state the events describe, checked by
// querying it (`oneway verify` needs a PostgreSQL source and refuses).
func TestDebeziumKafkaSource(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, debeziumTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	cfg := filepath.Join(t.TempDir(), "pipeline.yaml")
	brokers, _ := json.Marshal(cluster.ListenAddrs())
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`pipeline: customers
source:
  kind: kafka
  table: public.customers
  key: [id]
  columns: [id, name, balance, active, born_on, updated_at]
  types: {id: int8, name: text, balance: "numeric(12,2)", active: bool, born_on: date, updated_at: timestamptz}
  kafka:
    brokers: %s
    topic: %s
  capture:
    batch_size: 200
targets:
  - name: pg
    kind: postgres
    url: %q
`, brokers, debeziumTopic, dst.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	f := &debeziumFeed{t: t, cl: cl, rng: rand.New(rand.NewPCG(3, 7)), state: map[int]customer{},
		clock: time.Date(2024, 1, 31, 12, 0, 0, 0, time.UTC)}

	// A snapshot and changes, then a run to the end.
	f.events(500, true, 500, "snap")
	f.events(1500, false, 600, "one")
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced", "--admin-addr", "off")...)
	if r.Code != 0 {
		t.Fatalf("oneway up --exit-when-synced: exit %d\n%s", r.Code, r.Stderr)
	}
	if err := f.check(dst); err != nil {
		t.Fatal(err)
	}

	// More changes; oneway up killed once it applied some of them.
	f.events(4000, false, 700, "two")
	up := testenv.Start(t, "oneway", upArgs(cfg, data, "--admin-addr", "off")...)
	testenv.WaitFor(t, syncTimeout, func() error {
		if n := dst.Int(t, "SELECT count(*) FROM public.customers WHERE name LIKE 'two-%'"); n == 0 {
			return fmt.Errorf("no change of the second round applied yet")
		}
		return nil
	})
	up.Kill()
	t.Logf("oneway up killed with %d rows of the second round in the target", dst.Int(t, "SELECT count(*) FROM public.customers WHERE name LIKE 'two-%'"))
	f.events(500, false, 700, "three")
	r = testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced", "--admin-addr", "off")...)
	if r.Code != 0 {
		t.Fatalf("oneway up --exit-when-synced after the kill: exit %d\n%s", r.Code, r.Stderr)
	}
	if err := f.check(dst); err != nil {
		t.Fatal(err)
	}

	// verify cannot read a Kafka source back, and says so.
	v := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg)
	if v.Code != 2 || !strings.Contains(v.Stderr, "a kafka source has no read-back") {
		t.Fatalf("verify with a kafka source: exit %d\n%s", v.Code, v.Stderr)
	}
}
