package verify

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

// sourceDDL has a column of every kind of value the targets store
// differently: integers, numerics with scale, doubles (NaN, Infinity, a
// value whose shortest form is long, one PostgreSQL prints without an
// exponent), reals, booleans, jsonb, bytea, timestamps, dates, arrays,
// texts with quotes, tabs, HTML characters and non-ASCII letters, NULLs
// and empty strings.
const sourceDDL = `CREATE TABLE public.things (id bigint PRIMARY KEY, name text COLLATE "en-US-x-icu" NOT NULL,
  amount numeric(12,2), ratio double precision, small real, flag boolean, doc jsonb, raw bytea,
  at timestamptz, day date, tags text[], note text, big numeric, local timestamp);
INSERT INTO public.things
SELECT g, (ARRAY['a','B','_','é','Z', 'q"<&>'])[g % 6 + 1] || g, g * 1.25, g / 3.0, g / 10.0,
  g % 3 = 0, jsonb_build_object('g', g, 'tags', jsonb_build_array('x', g), 's', 'é <a>'),
  decode(lpad(to_hex(g), 4, '0'), 'hex'), '2024-01-02 03:04:05.123456+00'::timestamptz + g * interval '1 hour',
  '2024-02-29'::date + g, ARRAY['a b', 'c"d', g::text], CASE WHEN g % 5 = 0 THEN NULL WHEN g % 7 = 0 THEN '' ELSE E'note\t' || g END,
  (g::numeric * 1e25) + 0.000001, '2024-01-02 03:04:05.25'::timestamp + g * interval '1 minute'
FROM generate_series(1, 60) g;
UPDATE public.things SET ratio = 'NaN' WHERE id = 1;
UPDATE public.things SET ratio = '-Infinity', small = 'Infinity' WHERE id = 2;
UPDATE public.things SET ratio = 1000000, small = 0.1 WHERE id = 3;
UPDATE public.things SET ratio = 0.1 + 0.2, doc = '[]', big = 'NaN' WHERE id = 4;
UPDATE public.things SET ratio = 1e300, doc = '"just a string"' WHERE id = 5;
UPDATE public.things SET ratio = -0.0, doc = 'true' WHERE id = 6;`

// fixture is the source's rows and layout, and what the targets write.
type fixture struct {
	l    *Layout
	rows [][][]byte // text values per source row, in key order
	src  *pgxpool.Pool
	tbl  pgconn.Table
	dir  string

	natsURL string   // the NATS sink's server, once started
	kafka   []string // the Kafka sink's brokers, once started
	// kafkaAuth secures the Kafka sink when kafkaSecured is set: TLS only,
	// a SASL login required.
	kafkaSecured bool
	kafkaAuth    config.KafkaAuth
}

func newFixture(t *testing.T, key ...string) *fixture {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, sourceDDL)
	f := &fixture{src: openPool(t, url), tbl: pgconn.Table{Schema: "public", Name: "things"}, dir: t.TempDir()}
	f.l = layoutOf(t, f.src, f.tbl, key...)
	s, err := OpenPostgres(ctxT(t), f.src, f.tbl, f.l)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The raw texts, as the reader sends them.
	rows, err := f.src.Query(ctxT(t), "SELECT * FROM public.things ORDER BY id", pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r [][]byte
		for _, v := range rows.RawValues() {
			if v != nil {
				v = bytes.Clone(v)
			}
			r = append(r, v)
		}
		f.rows = append(f.rows, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return f
}

// compare compares the source with a side.
func (f *fixture) compare(t *testing.T, dst Side) Report {
	t.Helper()
	s, err := OpenPostgres(ctxT(t), f.src, f.tbl, f.l)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer dst.Close()
	rep, err := Compare(ctxT(t), s, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// jsonNumber is changejson's test for a number it writes as a JSON number.
var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// typed is a value as the JSON sinks type it (changejson.Typed): numbers
// that are JSON numbers as numbers, booleans, json/jsonb documents as
// they are, everything else (NaN, Infinity, timestamps, bytea, arrays) as
// strings.
func typed(typ string, v []byte) any {
	if v == nil {
		return nil
	}
	switch classOf(typ) {
	case classInt, classNumeric, classFloat:
		if jsonNumber.Match(v) {
			return json.Number(v)
		}
	case classBool:
		return string(v) == "t"
	case classJSON:
		return json.RawMessage(v)
	}
	return string(v)
}

// envelopeOf renders a change as the sinks do; a delete carries only the
// key columns.
func (f *fixture) envelopeOf(t *testing.T, row [][]byte, del bool, version int64) (key string, doc []byte) {
	t.Helper()
	key = f.l.NameOf(row)
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	b.WriteString(`{"op":`)
	op := "upsert"
	if del {
		op = "delete"
	}
	_ = e.Encode(op)
	b.WriteString(`,"key":`)
	_ = e.Encode(key)
	b.WriteString(`,"fields":{`)
	n := 0
	for i, c := range f.l.Columns {
		if del && !slicesContains(f.l.keyCols, i) {
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		_ = e.Encode(c.Name)
		b.WriteByte(':')
		if err := e.Encode(typed(c.Type, row[i])); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintf(&b, `},"version":%d}`, version)
	// Encode's newlines sit between tokens: insignificant.
	return key, bytes.ReplaceAll(b.Bytes(), []byte("\n"), nil)
}

func slicesContains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// logChange is one change a sink holds.
type logChange struct {
	row     [][]byte
	del     bool
	version int64
}

// sink writes changes the way one target kind stores them and reads them
// back as a Side.
type sink struct {
	name  string
	write func(t *testing.T, f *fixture, changes []logChange)
	open  func(t *testing.T, f *fixture) (Side, error)
}

func sinks() []sink {
	return []sink{
		{"jsonl", writeJSONL, func(t *testing.T, f *fixture) (Side, error) {
			return Fold(ctxT(t), f.l, f.dir, ScanJSONL(filepath.Join(f.dir, "out.jsonl"), f.l), nil)
		}},
		{"nats", writeNATS, func(t *testing.T, f *fixture) (Side, error) {
			return Fold(ctxT(t), f.l, f.dir, ScanNATS(NATSSpec{Pipeline: "p", Target: "bus", URL: f.natsURL, Subject: "out.{{.Key | token}}"}, f.l), nil)
		}},
		{"kafka", writeKafka, func(t *testing.T, f *fixture) (Side, error) {
			return Fold(ctxT(t), f.l, f.dir, ScanKafka(f.kafka, "things", f.kafkaAuth, f.l), nil)
		}},
		{"kafka_tls_sasl", func(t *testing.T, f *fixture, changes []logChange) {
			f.kafkaSecured = true
			writeKafka(t, f, changes)
		}, func(t *testing.T, f *fixture) (Side, error) {
			return Fold(ctxT(t), f.l, f.dir, ScanKafka(f.kafka, "things", f.kafkaAuth, f.l), nil)
		}},
	}
}

func writeJSONL(t *testing.T, f *fixture, changes []logChange) {
	t.Helper()
	file, err := os.OpenFile(filepath.Join(f.dir, "out.jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, c := range changes {
		_, doc := f.envelopeOf(t, c.row, c.del, c.version)
		if _, err := file.Write(append(doc, '\n')); err != nil {
			t.Fatal(err)
		}
	}
}

func writeNATS(t *testing.T, f *fixture, changes []logChange) {
	t.Helper()
	if f.natsURL == "" {
		_, url := bustest.StartJetStream(t)
		f.natsURL = url
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}}); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(f.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, c := range changes {
		key, doc := f.envelopeOf(t, c.row, c.del, c.version)
		m := nats.NewMsg("out." + token(key))
		m.Data = doc
		m.Header.Set("Nats-Msg-Id", bus.IdempotencyKey("p", "bus", key, c.version))
		m.Header.Set("Oneway-Version", strconv.FormatInt(c.version, 10))
		if _, err := js.PublishMsg(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
	}
	// A stranger's message and another target's on the same subjects are
	// not this target's changes.
	key, doc := f.envelopeOf(t, f.rows[0], false, 1<<40)
	other := nats.NewMsg("out." + token(key))
	other.Data = bytes.Replace(doc, []byte(`"amount":`), []byte(`"amount":"999",`+`"x":`), 1)
	other.Header.Set("Nats-Msg-Id", bus.IdempotencyKey("p", "other", key, 1<<40))
	if _, err := js.PublishMsg(ctxT(t), other); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctxT(t), "out.stranger", []byte("hello")); err != nil {
		t.Fatal(err)
	}
}

// token escapes a subject token as natstarget.Token does.
func token(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func writeKafka(t *testing.T, f *fixture, changes []logChange) {
	t.Helper()
	opts := []kgo.Opt{kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil))}
	if f.kafkaSecured {
		if f.kafka == nil {
			caFile, srvTLS := testca.New(t, t.TempDir())
			f.kafkaAuth = config.KafkaAuth{TLS: config.TLS{CAFile: caFile},
				SASL: config.KafkaSASL{Mechanism: config.SASLSCRAMSHA256, User: "verify", Password: "k4fka-verify-pw"}}
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "things"),
				kfake.TLS(srvTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "verify", "k4fka-verify-pw"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			f.kafka = c.ListenAddrs()
		}
		auth, err := kafkaAuthOptions(f.kafkaAuth)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, auth...)
	}
	if f.kafka == nil {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "things"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		f.kafka = c.ListenAddrs()
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(f.kafka...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, c := range changes {
		key, doc := f.envelopeOf(t, c.row, c.del, c.version)
		r := &kgo.Record{Topic: "things", Key: []byte(key),
			Headers: []kgo.RecordHeader{{Key: "oneway-version", Value: []byte(strconv.FormatInt(c.version, 10))}}}
		if !c.del {
			r.Value = doc
		}
		if err := cl.ProduceSync(ctxT(t), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSinksFoldToTheSource: each log kind, holding every row (some
// twice, some first deleted then recreated, some with an older state
// after the newer one), folds to the source's state; a newer change of a
// value, a delete and an extra key are each reported by key; an older
// version is not.
func TestSinksFoldToTheSource(t *testing.T) {
	for _, key := range [][]string{{"id"}, {"name", "id"}} {
		for _, s := range sinks() {
			t.Run(s.name+"/"+strings.Join(key, ","), func(t *testing.T) {
				f := newFixture(t, key...)
				var log []logChange
				for i, r := range f.rows {
					v := int64(1000 + i)
					switch i % 4 {
					case 1: // a stale state, then the current one
						stale := cloneRow(r)
						stale[2] = []byte("0.01")
						log = append(log, logChange{row: stale, version: v - 500})
					case 2: // deleted, then written again
						log = append(log, logChange{row: r, del: true, version: v - 500})
					}
					log = append(log, logChange{row: r, version: v})
					if i%4 == 3 { // an older state arriving late
						old := cloneRow(r)
						old[11] = []byte("older") // note
						log = append(log, logChange{row: old, version: v - 1})
					}
				}
				s.write(t, f, log)
				side, err := s.open(t, f)
				if err != nil {
					t.Fatal(err)
				}
				if rep := f.compare(t, side); !rep.Equal(true) || rep.SourceRows != 60 || rep.TargetRows != 60 {
					t.Fatalf("a sink holding the source: %+v", rep)
				}

				changed := cloneRow(f.rows[9])
				changed[3] = []byte("0.5") // ratio
				extra := cloneRow(f.rows[0])
				extra[0] = []byte("1000")
				s.write(t, f, []logChange{
					{row: changed, version: 5000},
					{row: f.rows[19], del: true, version: 5000},
					{row: extra, version: 5000},
				})
				side, err = s.open(t, f)
				if err != nil {
					t.Fatal(err)
				}
				rep := f.compare(t, side)
				want := Report{SourceRows: 60, TargetRows: 60, Missing: 1, Different: 1, Extra: 1,
					MissingKeys: []string{f.l.NameOf(f.rows[19])}, DifferentKeys: []string{f.l.NameOf(f.rows[9])},
					ExtraKeys: []string{f.l.NameOf(extra)}}
				if !equalReport(rep, want) {
					t.Fatalf("report %+v\nwant   %+v", rep, want)
				}
			})
		}
	}
}

func cloneRow(r [][]byte) [][]byte {
	out := make([][]byte, len(r))
	copy(out, r)
	return out
}

// sqliteDecl is the declared type and binding the SQLite target uses for
// a source type (sqlitetarget.sqliteType): integers and booleans INTEGER
// (booleans 0/1), floats REAL (bound as text: the affinity converts),
// everything else TEXT as the source printed it.
func sqliteDecl(typ string) (string, func([]byte) any) {
	text := func(v []byte) any { return string(v) }
	switch classOf(typ) {
	case classInt:
		return "INTEGER", func(v []byte) any { n, _ := strconv.ParseInt(string(v), 10, 64); return n }
	case classBool:
		return "INTEGER", func(v []byte) any {
			if string(v) == "t" {
				return 1
			}
			return 0
		}
	case classFloat:
		return "REAL", text
	}
	if strings.HasPrefix(typ, "timestamp") {
		return "DATETIME", text // as a hand-made table might declare it
	}
	return "TEXT", text
}

// TestSQLiteTable: a SQLite table holding the source's rows as the SQLite
// target stores them compares equal; an edited value, a deleted row and
// an extra row are reported; a missing file is an error, not a new file.
func TestSQLiteTable(t *testing.T) {
	f := newFixture(t, "name", "id")
	path := filepath.Join(f.dir, "target.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var defs, marks []string
	var binds []func([]byte) any
	for _, c := range f.l.Columns {
		decl, bind := sqliteDecl(c.Type)
		defs = append(defs, sqliteQuote(c.Name)+" "+decl)
		marks = append(marks, "?")
		binds = append(binds, bind)
	}
	if _, err := db.Exec(`CREATE TABLE "things" (` + strings.Join(defs, ", ") + `, crm TEXT, PRIMARY KEY ("name", "id"))`); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.rows {
		args := make([]any, len(r))
		for i, v := range r {
			if v != nil {
				args[i] = binds[i](v)
			}
		}
		if _, err := db.Exec(`INSERT INTO "things" VALUES (`+strings.Join(marks, ", ")+`, 'target-only')`, args...); err != nil {
			t.Fatal(err)
		}
	}
	open := func() Side {
		t.Helper()
		side, err := Fold(ctxT(t), f.l, f.dir, ScanSQLite(path, "things", f.l), nil)
		if err != nil {
			t.Fatal(err)
		}
		return side
	}
	if rep := f.compare(t, open()); !rep.Equal(true) || rep.SourceRows != 60 || rep.TargetRows != 60 {
		t.Fatalf("a SQLite table holding the source: %+v", rep)
	}
	for _, q := range []string{
		`UPDATE "things" SET small = small + 1 WHERE id = 10`,
		`UPDATE "things" SET at = '2024-01-02T03:04:05Z' WHERE id = 11`,
		`DELETE FROM "things" WHERE id = 20`,
		`INSERT INTO "things" (id, name) VALUES (61, 'zz')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	rep := f.compare(t, open())
	want := Report{SourceRows: 60, TargetRows: 60, Missing: 1, Different: 2, Extra: 1,
		MissingKeys: []string{f.l.NameOf(f.rows[19])}, DifferentKeys: []string{f.l.NameOf(f.rows[9]), f.l.NameOf(f.rows[10])},
		ExtraKeys: []string{`["61","zz"]`}}
	if !equalReport(rep, want) {
		// The sample order is the key order: sort the expectation alike.
		t.Fatalf("report %+v\nwant   %+v (in any order)", rep, want)
	}

	missing := filepath.Join(f.dir, "nope.db")
	if _, err := Fold(ctxT(t), f.l, f.dir, ScanSQLite(missing, "things", f.l), nil); err == nil {
		t.Error("a missing database file was read")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("verify created %s", missing)
	}
	// The fold databases are gone.
	entries, _ := filepath.Glob(filepath.Join(f.dir, "oneway-verify-*"))
	if len(entries) != 0 {
		t.Errorf("fold databases left behind: %v", entries)
	}
}

// TestJSONLLines: a partial last line is a write in progress and is not
// read; a line that is not an envelope is an error naming the line.
func TestJSONLLines(t *testing.T) {
	l, _ := NewLayout([]Column{{"id", "bigint"}, {"v", "text"}}, []string{"id"})
	dir := t.TempDir()
	path := filepath.Join(dir, "x.jsonl")
	read := func(body string) (map[string]string, error) {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		side, err := Fold(context.Background(), l, dir, ScanJSONL(path, l), nil)
		if err != nil {
			return nil, err
		}
		defer side.Close()
		got := map[string]string{}
		for {
			r, err := side.Next(context.Background())
			if err != nil {
				return got, nil
			}
			got[r.Name] = string(r.Values[1])
		}
	}
	got, err := read(`{"op":"upsert","key":"1","fields":{"id":1,"v":"a"},"version":3}` + "\n\n" +
		`{"op":"upsert","key":"2","fields":{"id":2,"v":"b"},"version":4}` + "\n" +
		`{"op":"upsert","key":"1","fields":{"id":1,"v":"new"},"version":9}`)
	if err != nil || len(got) != 2 || got["1"] != "a" || got["2"] != "b" {
		t.Errorf("with a partial last line: %v, %v", got, err)
	}
	if _, err := read(`{"op":"upsert","key":"1","fields":{"id":1},"version":3}` + "\n" + "not json\n"); err == nil ||
		!strings.Contains(err.Error(), "line 2") {
		t.Errorf("a bad line: %v", err)
	}
	if _, err := read(`{"op":"merge","key":"1","fields":{},"version":3}` + "\n"); err == nil || !strings.Contains(err.Error(), "merge") {
		t.Errorf("an unknown op: %v", err)
	}
	if _, err := read(`{"op":"upsert","fields":{},"version":3}` + "\n"); err == nil {
		t.Error("an envelope without a key was read")
	}
}

// TestFilterSubject: the filter covers every subject a template renders.
func TestFilterSubject(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{"", "oneway.out.p.t"},
		{"out.invoices", "out.invoices"},
		{"out.invoices.{{.Key | token}}", "out.invoices.>"},
		{"out.{{.Op}}.x.{{.Key}}", "out.>"},
		{"out.k{{.Key}}", "out.>"},
	} {
		if got := FilterSubject("p", "t", tc.tmpl); got != tc.want {
			t.Errorf("FilterSubject(%q) = %q, want %q", tc.tmpl, got, tc.want)
		}
	}
}
