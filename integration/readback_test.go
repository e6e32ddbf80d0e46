package integration

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// verifyTarget runs `oneway verify --target name` and checks its exit code.
func verifyTarget(t *testing.T, cfg, name string, wantCode int) string {
	t.Helper()
	r := testenv.Run(t, 2*time.Minute, "oneway", "verify", "--config", cfg, "--target", name, "--log-level", "warn")
	if r.Code != wantCode {
		t.Fatalf("oneway verify --target %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", name, r.Code, wantCode, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// natsOut starts a NATS JetStream server for NATS targets, with stream OUT
// on out.>, and returns its URL and the stream.
func natsOut(t *testing.T, cfg jetstream.StreamConfig) (string, jetstream.Stream) {
	t.Helper()
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	cfg.Name, cfg.Subjects, cfg.Storage = "OUT", []string{"out.>"}, jetstream.FileStorage
	st, err := js.CreateStream(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return url, st
}

// typesDDL is a source whose composite key has an ICU collation (its
// order differs from byte order) and whose columns hold every kind of
// value the target kinds store differently.
const typesDDL = `CREATE TABLE public.things (name text COLLATE "en-US-x-icu" NOT NULL, id int NOT NULL,
  amount numeric(12,2), ratio double precision, small real, flag boolean, doc jsonb, meta json, raw bytea,
  day date, tags text[], uid uuid, span interval, note text,
  updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, id));
INSERT INTO public.things (name, id, amount, ratio, small, flag, doc, meta, raw, day, tags, uid, span, note)
SELECT (ARRAY['a','B','_','é','Z','q"<&>'])[g % 6 + 1] || g, g, g * 1.25, g / 3.0, g / 10.0, g % 3 = 0,
  jsonb_build_object('g', g, 'list', jsonb_build_array('x', g), 's', 'é <b>'), json_build_object('g', g, 'h', 'x y'),
  decode(lpad(to_hex(g), 4, '0'), 'hex'), '2024-02-29'::date + g, ARRAY['a b', 'c"d', g::text],
  md5(g::text)::uuid, g * interval '90 minutes',
  CASE WHEN g % 5 = 0 THEN NULL WHEN g % 7 = 0 THEN '' ELSE E'note\t' || g END
FROM generate_series(1, 300) g;
UPDATE public.things SET ratio = 'NaN', small = 'Infinity' WHERE id = 1;
UPDATE public.things SET ratio = 1000000, doc = '[]', meta = '"text"' WHERE id = 2;
UPDATE public.things SET ratio = 0.1 + 0.2, doc = 'true', amount = -0.5 WHERE id = 3;
UPDATE public.things SET ratio = 1e300, small = 1e-30 WHERE id = 4;`

// Every target kind that can be read back is compared by verify, through
// the real writers: equal after a sync, whatever form each kind stores a
// value in; one changed source value is reported, by key, for each kind;
// equal again after the next sync. (TestHTTPTargetThroughOutage checks
// that an HTTP target is skipped with a line saying so.)
func TestVerifyReadsBackEveryKind(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := pgtest.NewDatabase(t)
	ledger := pgtest.NewDatabase(t)
	src.Exec(t, typesDDL)
	natsURL, _ := natsOut(t, jetstream.StreamConfig{})
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "things"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pipeline.yaml")
	writeFile(t, cfg, fmt.Sprintf(`pipeline: things
source:
  kind: postgres
  url: %q
  table: public.things
  key: [name, id]
  capture: {pattern: watermark, column: updated_at, batch_size: 100, poll_interval: 100ms}
targets:
  - {name: pg, kind: postgres, url: %q}
  - {name: lite, kind: sqlite, url: %q}
  - {name: lines, kind: jsonl, url: %q, ledger_url: %q}
  - {name: bus, kind: nats, url: %q, ledger_url: %q, nats: {subject: "out.things.{{.Key | token}}", jetstream: true}}
  - {name: topic, kind: kafka, url: %q, ledger_url: %q, kafka: {topic: things}}
`, src.URL, dst, filepath.Join(dir, "things.db"), filepath.Join(dir, "things.jsonl"), ledger,
		natsURL, ledger, strings.Join(cluster.ListenAddrs(), ","), ledger))
	data := t.TempDir()
	sync := func() {
		t.Helper()
		r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
		if r.Code != 0 {
			t.Fatalf("oneway up: exit %d\n%s", r.Code, r.Stderr)
		}
	}
	kinds := []string{"pg", "lite", "lines", "bus", "topic"}
	sync()
	out := mustVerify(t, cfg, 0).Stdout
	for _, tg := range kinds {
		if !regexp.MustCompile(`target ` + tg + ` \([^)]+\): OK  source_rows=300 target_rows=300 missing=0 different=0 extra=0`).MatchString(out) {
			t.Fatalf("verify after the sync: no OK line for %s:\n%s", tg, out)
		}
	}

	// One value changes at the source and is not synced yet.
	src.Exec(t, `UPDATE public.things SET ratio = ratio * 2, updated_at = now() WHERE id = 3`)
	out = mustVerify(t, cfg, 1).Stdout
	for _, tg := range kinds {
		line := regexp.MustCompile(`target ` + tg + ` \([^)]+\): DIFFERENT .*\n  different keys \(sample\): (.*)`).FindStringSubmatch(out)
		if line == nil || !strings.Contains(line[0], "missing=0 different=1 extra=0") || line[1] != `["é3","3"]` {
			t.Fatalf("verify after a source change: %s does not report key [\"é3\",\"3\"] as the one difference:\n%s", tg, out)
		}
	}
	sync()
	mustVerify(t, cfg, 0)
}

// poisonCase is one target kind with a natural, permanent rejection of one
// record, and the fix of the target that makes it accept the record.
type poisonCase struct {
	target string // target name in the pipeline
	// setup prepares the target, returns the target's YAML (an entry of
	// targets:) and the fix; ledger is a database for a side ledger.
	setup func(t *testing.T, dir, ledger string) (yaml string, fix func())
	bad   string // SQL making key 1234 a record the target rejects
	cause string // in the dead letter's cause (lower case)
	count func(t *testing.T) int64
	// explain, when set, says which records a wrong count is about.
	explain func(t *testing.T) string
}

func (pc poisonCase) why(t *testing.T) string {
	if pc.explain == nil {
		return ""
	}
	return pc.explain(t)
}

// A poison record per target kind: rejected for good by the target, it
// lands in oneway.<p>.dlq.<t> with its cause, while every other record
// arrives there and at the PostgreSQL target; verify exits 1 naming its
// key; after the target is fixed, `oneway dlq retry` applies it and
// verify exits 0. (A JSONL file rejects no record: every failure to
// append is an outage of the whole file, so it has no poison case;
// TestVerifyReadsBackEveryKind reads it back.)
func TestPoisonRecordPerKind(t *testing.T) {
	var liteDB string
	var outStream jetstream.Stream
	var kafkaCluster *kfake.Cluster
	for _, pc := range []poisonCase{
		{
			target: "lite",
			setup: func(t *testing.T, dir, _ string) (string, func()) {
				liteDB = filepath.Join(dir, "target.db")
				db := openSQLite(t, liteDB)
				mustSQLite(t, db, `CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, amount NUMERIC CHECK (amount >= 0),
  status TEXT, note TEXT, updated_at TEXT)`)
				return fmt.Sprintf("  - {name: lite, kind: sqlite, url: %q}\n", liteDB), func() {
					// SQLite cannot drop a constraint: rebuild the table without it.
					mustSQLite(t, db, `BEGIN`,
						`CREATE TABLE invoices_new (id INTEGER PRIMARY KEY, customer TEXT, amount NUMERIC, status TEXT, note TEXT, updated_at TEXT)`,
						`INSERT INTO invoices_new SELECT * FROM invoices`, `DROP TABLE invoices`,
						`ALTER TABLE invoices_new RENAME TO invoices`, `COMMIT`)
				}
			},
			bad:   "UPDATE public.invoices SET amount = -5 WHERE id = 1234",
			cause: "check constraint failed",
			count: func(t *testing.T) int64 {
				var n int64
				if err := openSQLite(t, liteDB).QueryRow("SELECT count(*) FROM invoices").Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			},
		},
		{
			target: "bus",
			setup: func(t *testing.T, _, ledger string) (string, func()) {
				var url string
				url, outStream = natsOut(t, jetstream.StreamConfig{MaxMsgSize: 64 << 10})
				return fmt.Sprintf("  - {name: bus, kind: nats, url: %q, ledger_url: %q, nats: {subject: out.invoices, jetstream: true}}\n", url, ledger), func() {
					ctx := context.Background()
					info, err := outStream.Info(ctx)
					if err != nil {
						t.Fatal(err)
					}
					c := info.Config
					c.MaxMsgSize = 1 << 20
					nc, _ := nats.Connect(url)
					defer nc.Close()
					js, _ := jetstream.New(nc)
					if _, err := js.UpdateStream(ctx, c); err != nil {
						t.Fatal(err)
					}
				}
			},
			bad:   "UPDATE public.invoices SET note = repeat('x', 100000) WHERE id = 1234",
			cause: "maximum",
			count: func(t *testing.T) int64 {
				info, err := outStream.Info(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				return int64(info.State.Msgs)
			},
		},
		{
			target: "topic",
			setup: func(t *testing.T, _, ledger string) (string, func()) {
				var err error
				kafkaCluster, err = kfake.NewCluster(kfake.NumBrokers(1))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(kafkaCluster.Close)
				if err := kafkaCluster.CreateTopic("invoices", 3, map[string]string{"max.message.bytes": "65536"}); err != nil {
					t.Fatal(err)
				}
				brokers := strings.Join(kafkaCluster.ListenAddrs(), ",")
				return fmt.Sprintf("  - {name: topic, kind: kafka, url: %q, ledger_url: %q, kafka: {topic: invoices}}\n", brokers, ledger), func() {
					alterTopic(t, kafkaCluster, "invoices", "max.message.bytes", "1048576")
				}
			},
			bad:   "UPDATE public.invoices SET note = repeat('x', 100000) WHERE id = 1234",
			cause: "too large",
			count: func(t *testing.T) int64 {
				var n int64
				for _, p := range kafkaCluster.PartitionInfos("invoices") {
					n += p.HighWatermark - p.LogStartOffset
				}
				return n
			},
			explain: func(t *testing.T) string {
				perKey := map[string]int{}
				for _, r := range readTopic(t, kafkaCluster, "invoices") {
					perKey[string(r.Key)]++
				}
				var missing, twice []string
				for id := 1; id <= 2000; id++ {
					switch k := strconv.Itoa(id); perKey[k] {
					case 0:
						missing = append(missing, k)
					case 1:
					default:
						twice = append(twice, k)
					}
				}
				return fmt.Sprintf(" (keys missing: %v; keys held more than once: %v)", missing, twice)
			},
		},
	} {
		t.Run(pc.target, func(t *testing.T) {
			src := testenv.Connect(t, pgtest.NewDatabase(t))
			dst := testenv.Connect(t, pgtest.NewDatabase(t))
			src.Exec(t, testenv.InvoicesDDL)
			testenv.SeedInvoices(t, src, 1, 2000)
			src.Exec(t, pc.bad)
			yaml, fix := pc.setup(t, t.TempDir(), pgtest.NewDatabase(t))
			cfg := testenv.Config(t, "", src.URL, dst.URL, yaml)
			data := t.TempDir()

			upWithDeadLetters(t, cfg, data)
			if err := countIs(dst, 2000); err != nil {
				t.Fatalf("the PostgreSQL target was held back: %v", err)
			}
			if n := pc.count(t); n != 1999 {
				t.Fatalf("target %s holds %d records, want the 1999 others%s", pc.target, n, pc.why(t))
			}
			var letters []string
			for _, line := range strings.Split(mustDLQ(t, cfg, data, "list"), "\n") {
				if m := dlqRow.FindStringSubmatch(line); m != nil {
					letters = append(letters, line)
					if m[2] != pc.target || m[3] != "1234" || !strings.Contains(strings.ToLower(m[5]), pc.cause) {
						t.Fatalf("dead letter %q: want target %s, key 1234, a cause naming %q", line, pc.target, pc.cause)
					}
				}
			}
			if len(letters) != 1 {
				t.Fatalf("dead letters %q, want one", letters)
			}
			t.Logf("dead letter: %s", letters[0])
			out := verifyTarget(t, cfg, pc.target, 1)
			if !strings.Contains(out, "source_rows=2000 target_rows=1999 missing=1 different=0 extra=0") ||
				!strings.Contains(out, "missing keys (sample): 1234\n") {
				t.Fatalf("verify before the fix does not name the missing key 1234:\n%s", out)
			}
			verifyTarget(t, cfg, "pg", 0)

			fix()
			mustDLQ(t, cfg, data, "retry", "--all", "--target", pc.target)
			if r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...); r.Code != 0 {
				t.Fatalf("oneway up after the retry: exit %d\n%s", r.Code, r.Stderr)
			}
			mustVerify(t, cfg, 0)
			if n := pc.count(t); n != 2000 {
				t.Fatalf("target %s holds %d records after the retry, want 2000%s", pc.target, n, pc.why(t))
			}
			if out := mustDLQ(t, cfg, data, "list"); !strings.Contains(out, "no dead letters") {
				t.Fatalf("dead letters left after the retry:\n%s", out)
			}
		})
	}
}

func openSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func mustSQLite(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// alterTopic sets one config of a topic (IncrementalAlterConfigs).
func alterTopic(t *testing.T, c *kfake.Cluster, topic, name, value string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeTopic
	res.ResourceName = topic
	cfg := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	cfg.Name, cfg.Value = name, &value
	cfg.Op = kmsg.IncrementalAlterConfigOpSet
	res.Configs = append(res.Configs, cfg)
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Resources {
		if r.ErrorCode != 0 {
			t.Fatalf("alter %s of topic %s: error code %d %v", name, topic, r.ErrorCode, r.ErrorMessage)
		}
	}
}
