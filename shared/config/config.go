// Package config loads, expands and validates a oneway pipeline file.
//
// A pipeline file describes exactly one pipeline: one System of Record (the
// source), the NATS JetStream stream that carries its changes, and one or more
// targets that the changes are written to. Loading a file happens in four
// steps:
//
//  1. the YAML is parsed into a node tree;
//  2. environment variables are expanded in every scalar value (${VAR},
//     ${VAR:-default}, $$ for a literal $);
//  3. the tree is decoded strictly: unknown fields and values of the wrong
//     type are errors that name the file, the line and the field;
//  4. defaults are applied and the result is validated; every problem found
//     is reported, not only the first one.
//
// All errors produced while loading are *FieldError values joined with
// errors.Join, so callers can use errors.As to inspect them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Pipeline is one pipeline file.
type Pipeline struct {
	// Pipeline is the pipeline's name. It is used in NATS subjects, stream
	// names and SQL identifiers, so it must match ^[a-z][a-z0-9_]{0,39}$.
	Pipeline string `yaml:"pipeline"`
	// NATS configures the JetStream stream that carries the changes.
	NATS NATS `yaml:"nats"`
	// Source is the System of Record.
	Source Source `yaml:"source"`
	// Targets receive the changes; at least one, with unique names.
	Targets []Target `yaml:"targets"`
	// Mode is the push mode: "direct" (default: writers apply the source's
	// changes as they come) or "staged" (both sides are staged, and a differ
	// decides what each target needs; see Stage).
	Mode string `yaml:"mode"`
	// Stage configures the stage store and the differ of staged mode.
	Stage Stage `yaml:"stage"`
	// Admin configures the admin HTTP endpoint.
	Admin Admin `yaml:"admin"`
	// Production refuses insecure settings: plaintext or unauthenticated
	// NATS, PostgreSQL without sslmode=verify-full or verify-ca, http://
	// targets off loopback, the embedded NATS server. Default false.
	Production bool `yaml:"production,omitempty"`
	// File is the path the pipeline was loaded from (the name given to Parse).
	File string `yaml:"-"`
	// Group is the name written in a multi-table file (source.tables), of
	// which this pipeline is the one for a single table; "" for a file of
	// one table. See ParseAll.
	Group string `yaml:"-"`
}

// NATS configures the connection to NATS and the JetStream stream.
type NATS struct {
	// URL of the NATS server(s). Empty means an embedded server, which only
	// `oneway up` supports.
	URL Secret `yaml:"url"`
	// MaxBytes limits the stream's size in bytes. Default 1 GiB; must be > 0.
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxAge is the stream's retention. Default 168h; 0 means unlimited.
	MaxAge Duration `yaml:"max_age"`
	// Replicas is the stream's replica count. Default 1; 1..5.
	Replicas int `yaml:"replicas"`
	// DuplicateWindow is the stream's de-duplication window. Default 2m.
	DuplicateWindow Duration `yaml:"duplicate_window"`
	// NATSAuth: the credentials, TLS and inbox prefix of every service's
	// connection.
	NATSAuth `yaml:",inline"`
}

// NATSAuth is how a client proves who it is to NATS servers and protects
// its connection: the pipeline's own (nats:) and a NATS target's
// (targets[].nats:) take the same fields.
type NATSAuth struct {
	// Credentials, at most one kind: User and Password, Token, NKeyFile (an
	// nkey seed file) or CredsFile (a JWT .creds file). A user and password
	// in the URL also work.
	User      string `yaml:"user,omitempty"`
	Password  Opaque `yaml:"password,omitempty"`
	Token     Opaque `yaml:"token,omitempty"`
	NKeyFile  string `yaml:"nkey_file,omitempty"`
	CredsFile string `yaml:"creds_file,omitempty"`
	// TLS to the NATS servers; also on when the URL scheme is tls://.
	TLS TLS `yaml:"tls,omitempty"`
	// InboxPrefix is the prefix of the subjects replies come back on.
	// Default _INBOX. Giving each service's user its own (_INBOX_reader)
	// and allowing it only that one keeps users from reading each other's
	// replies, which carry the pipeline's data (deploy/nats/permissions.conf).
	InboxPrefix string `yaml:"inbox_prefix,omitempty"`
}

// TLS configures a TLS client.
type TLS struct {
	// On turns TLS on with the system's roots (yaml "enabled"); giving a
	// file turns it on too.
	On bool `yaml:"enabled,omitempty"`
	// CAFile verifies the server (PEM). Default: the system's roots.
	CAFile string `yaml:"ca_file,omitempty"`
	// CertFile and KeyFile are a client certificate (mutual TLS); both or
	// neither.
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
}

// Enabled reports whether TLS is on: enabled, or any file given.
func (t TLS) Enabled() bool { return t.On || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Stage configures staged push: where the stage store lives and how often
// the differ compares every key.
type Stage struct {
	// URL is the PostgreSQL database of the stage store. Empty means the
	// embedded store (one SQLite file under `oneway up`'s --data-dir),
	// which only `oneway up` supports.
	URL Secret `yaml:"url"`
	// Schema holds the stage tables in URL's database. Default
	// "oneway_stage".
	Schema string `yaml:"schema"`
	// ScanInterval is how often the differ joins every key, not only the
	// keys the stager hands it (it also does at start). Default 5m; >= 1s.
	ScanInterval Duration `yaml:"scan_interval"`
}

// Admin configures the admin HTTP endpoint.
type Admin struct {
	// Addr is the host:port serving /healthz, /readyz and /metrics.
	// Default "" disables the endpoint.
	Addr string `yaml:"addr"`
}

// Source is the System of Record a pipeline reads from.
type Source struct {
	// Kind of the source: "postgres", "sqlite" (a SQLite database file),
	// "mysql" (MySQL or MariaDB), or "kafka" (a topic of Debezium change
	// events, capture pattern cdc), "csv" or "jsonl" (a file, synthetic
	// pattern), or "http" (a JSON API: synthetic, watermark,
	// watermark_cdc). sqlite and mysql support the watermark,
	// watermark_cdc, synthetic and window patterns.
	Kind string `yaml:"kind"`
	// URL is the connection string of the source database (postgres: a
	// PostgreSQL URL; mysql: a go-sql-driver DSN,
	// user:pass@tcp(host:port)/db; sqlite: the database file's path; not
	// used by kafka, whose brokers are in Kafka).
	URL Secret `yaml:"url"`
	// Table is "schema.table", or "table" for a table in schema "public".
	// For mysql, "db.table" names the database, and "table" (or
	// "public.table") means the DSN's; for sqlite, the schema part is
	// ignored (SQLite has none).
	// For kafka, the table the events are about: the batches' table name
	// and the targets' default table.
	Table string `yaml:"table"`
	// Key lists the columns identifying a row; at least one, no duplicates.
	Key []string `yaml:"key"`
	// Columns lists the columns the pipeline owns. Empty means all columns
	// of the table; when given it must include every key column.
	Columns []string `yaml:"columns"`
	// Capture says how changes are detected.
	Capture Capture `yaml:"capture"`
	// Types maps each owned column to its PostgreSQL type ("bigint",
	// "numeric(12,2)", "timestamptz", …), for sources without a catalog
	// (kafka, where it and Columns are required; csv, jsonl and http, where
	// Columns is required and a column without a type is text). Aliases are rewritten to
	// the catalog's spelling on load ("timestamptz" → "timestamp with time
	// zone"); see CanonicalType. Not allowed for postgres.
	Types map[string]string `yaml:"types,omitempty"`
	// Kafka configures a source of kind "kafka".
	Kafka KafkaSource `yaml:"kafka,omitempty"`
	// Tables lists several tables of this source instead of Table, Key and
	// Columns: loading expands the file into one pipeline per table (see
	// ParseAll). Not for kafka.
	Tables []SourceTable `yaml:"tables,omitempty"`
	// HTTP configures a source of kind "http".
	HTTP HTTPSource `yaml:"http,omitempty"`
}

// SourceTable is one table of a multi-table pipeline file.
type SourceTable struct {
	// Name is the suffix of the table's pipeline, <pipeline>_<name>.
	// Default: the table's name (without schema or database) in lower
	// case, characters other than a-z, 0-9 and _ turned into _.
	Name string `yaml:"name,omitempty"`
	// Table, Key and Columns are source.table, source.key and
	// source.columns of this table's pipeline.
	Table   string   `yaml:"table"`
	Key     []string `yaml:"key"`
	Columns []string `yaml:"columns,omitempty"`
	// Capture overrides fields of source.capture for this table (only
	// those given here; for example column, or poll_interval).
	Capture Capture `yaml:"capture,omitempty"`
	// TargetTable is every target's table for this table. Default: the
	// source table (targets[].table is not allowed with source.tables).
	TargetTable string `yaml:"target_table,omitempty"`
}

// HTTPSource is an HTTP JSON API listing a collection: GET URL returns a
// page of records (a JSON object whose RecordsField is an array of
// objects, one field per column) and the token of the next page.
type HTTPSource struct {
	// Headers are sent with every request (an Authorization header, an
	// API key); values are secrets, never printed or logged.
	Headers []Header `yaml:"headers"`
	// Timeout bounds one request. Default 30s.
	Timeout Duration `yaml:"timeout"`
	// MaxAttempts bounds the tries of one request on 429, 5xx and
	// network errors (honouring Retry-After). Default 8.
	MaxAttempts int `yaml:"max_attempts"`
	// PageSize is the limit asked for per page. Default 500.
	PageSize int `yaml:"page_size"`
	// RecordsField is the response field holding the records. Default
	// "data".
	RecordsField string `yaml:"records_field"`
	// NextTokenField is the response field holding the next page's token
	// (absent, null or "" on the last page). Default "next_page_token".
	NextTokenField string `yaml:"next_token_field"`
	// PageTokenParam is the query parameter carrying that token. Default
	// "page_token".
	PageTokenParam string `yaml:"page_token_param"`
	// LimitParam is the query parameter carrying PageSize. Default
	// "limit".
	LimitParam string `yaml:"limit_param"`
	// ModifiedSinceParam is the query parameter of the watermark
	// patterns: the API lists the records whose capture.column is at or
	// after it (RFC 3339). Default "modified_since".
	ModifiedSinceParam string `yaml:"modified_since_param"`
}

// KafkaSource is a Kafka topic of Debezium-format change events, read in a
// consumer group.
type KafkaSource struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string `yaml:"brokers"`
	// Topic holds the change events of Table. Required.
	Topic string `yaml:"topic"`
	// Group is the consumer group whose committed offsets are the reader's
	// position. Default oneway-<pipeline>.
	Group string `yaml:"group"`
	// KafkaAuth: TLS and SASL to the brokers.
	KafkaAuth `yaml:",inline"`
}

// KafkaAuth is how a Kafka client protects its connections to the brokers
// and proves who it is: source.kafka and targets[].kafka take the same
// fields.
type KafkaAuth struct {
	// TLS to the brokers (tls: {enabled: true} for the system's roots).
	TLS TLS `yaml:"tls,omitempty"`
	// SASL authenticates to the brokers; usually over TLS.
	SASL KafkaSASL `yaml:"sasl,omitempty"`
}

// KafkaSASL is a SASL login to Kafka brokers.
type KafkaSASL struct {
	// Mechanism is "plain", "scram-sha-256" or "scram-sha-512"; empty: no
	// SASL.
	Mechanism string `yaml:"mechanism,omitempty"`
	User      string `yaml:"user,omitempty"`
	Password  Opaque `yaml:"password,omitempty"`
}

// SASL mechanisms of KafkaSASL.Mechanism.
const (
	SASLPlain       = "plain"
	SASLSCRAMSHA256 = "scram-sha-256"
	SASLSCRAMSHA512 = "scram-sha-512"
)

// Capture says how a source's changes are detected.
type Capture struct {
	// Pattern is the capture pattern: "watermark" (default), "synthetic",
	// "window", "watermark_cdc" ("watermark+cdc" is accepted and printed
	// as watermark_cdc) or "cdc" (PostgreSQL logical replication).
	Pattern string `yaml:"pattern"`
	// Column is the pattern's column: the watermark column (a timestamp, or
	// a number that a sequence sets) for watermark; a date or timestamp
	// column for watermark_cdc and for window (the column the window
	// slides over). Not used by synthetic.
	Column string `yaml:"column"`
	// BatchSize is the number of rows per message. Default 1000; 1..100000.
	BatchSize int `yaml:"batch_size"`
	// PollInterval is the time between polls (watermark, watermark_cdc) or
	// between the end of one full cycle and the start of the next
	// (synthetic, window). Default 1s for the watermark patterns, 1m for
	// synthetic and window; must be > 0.
	PollInterval Duration `yaml:"poll_interval"`
	// Lookback re-reads rows this far behind the watermark. Default 0.
	Lookback Duration `yaml:"lookback"`
	// Window is the span of the window pattern: each cycle compares the rows
	// whose Column is at or after now() minus Window. Required (> 0) for
	// the window pattern, not allowed with the others.
	Window Duration `yaml:"window,omitempty"`
	// Overlap is how far behind the watermark each watermark_cdc poll starts
	// reading again, for columns whose values arrive late or coarse (a
	// date, a time truncated to the second, a time set by the application).
	// Rows read again are filtered by their hashes. Default 0 (the rows at
	// the watermark itself are always read again); only for watermark_cdc.
	Overlap Duration `yaml:"overlap,omitempty"`
	// DeleteFeed tells the watermark patterns where deletes are recorded
	// (a watermark alone does not see them).
	DeleteFeed DeleteFeed `yaml:"delete_feed,omitempty"`
	// Slot is the logical replication slot of the cdc pattern. Slot names
	// are global to the PostgreSQL cluster: two pipelines on one cluster
	// need different slots. Default oneway_<pipeline>; [a-z_][a-z0-9_]{0,62};
	// only for cdc.
	Slot string `yaml:"slot,omitempty"`
	// Publication is the publication the cdc pattern creates (or reuses and
	// extends) FOR TABLE the source table. Default oneway_<pipeline>; same
	// rules as Slot; only for cdc.
	Publication string `yaml:"publication,omitempty"`
	// WALBudget is how many bytes of WAL the cdc slot may keep on the source
	// before the reader warns (log, and oneway_cdc_slot_over_budget = 1): a
	// stopped or slow reader makes the source keep every WAL segment since
	// its last confirmed position. Default 10 GiB; 0 disables the alert;
	// only for cdc.
	WALBudget int64 `yaml:"wal_budget"`
}

// DeleteFeed says where a source records its deletes.
type DeleteFeed struct {
	// SoftDeleteColumn is a column of the source table that marks a row as
	// deleted when it is set (not NULL; for a boolean column, true). Such
	// rows become delete events in every pattern. It must not be a key
	// column; it need not be an owned column.
	SoftDeleteColumn string `yaml:"soft_delete_column,omitempty"`
	// Table is a table or view with one row per deleted record: the key
	// columns (named as in the source) and Column, its pointer. Only for
	// the watermark patterns; read in the same order as the watermark, so
	// a delete and a later re-insert of a key keep their order.
	Table string `yaml:"table,omitempty"`
	// Column is the pointer column of Table, of the watermark column's type
	// and set the same way (DEFAULT now(); for a number, from the same
	// sequence). Required with Table.
	Column string `yaml:"column,omitempty"`
}

// Target is a database the changes are written to.
type Target struct {
	// Name of the target: ^[a-z][a-z0-9_]{0,39}$, unique in the pipeline.
	Name string `yaml:"name"`
	// Kind of the target: "postgres", "sqlite", "http", "nats", "kafka",
	// "jsonl" or "mysql" (MySQL or MariaDB).
	Kind string `yaml:"kind"`
	// URL says where the target is, by kind: postgres, the connection
	// string; sqlite and jsonl, the file path; http, the request URL
	// template (text/template with .Key, .KeyParts, .Fields and .Op; the
	// func "path" escapes a path segment); nats, the NATS server URL;
	// kafka, the brokers (host:port, comma-separated); mysql, a
	// go-sql-driver DSN, user:pass@tcp(host:port)/db[?params].
	URL Secret `yaml:"url"`
	// Table is the target table. Default: the source table. For mysql,
	// "db.table" names the database; "public.table" and "table" mean the
	// URL's database.
	Table string `yaml:"table"`
	// CreateTable creates the target table when missing. Default true; use
	// CreatesTable to read it.
	CreateTable *bool `yaml:"create_table"`
	// Delete is what happens to rows deleted at the source: "hard"
	// (default), "soft" or "none".
	Delete string `yaml:"delete"`
	// SoftDeleteColumn is the column marking soft-deleted rows; required if
	// and only if Delete is "soft".
	SoftDeleteColumn string `yaml:"soft_delete_column"`
	// Orphans is what happens to target rows missing at the source:
	// "keep" (default), "delete" or "report". Staged mode acts on it.
	Orphans string `yaml:"orphans"`
	// RecreateDeleted (staged mode): a record deleted in the target (by
	// someone else) while the source still has it is inserted again.
	// Default false: it stays deleted until the source changes it.
	RecreateDeleted bool `yaml:"recreate_deleted"`
	// MaxPushesPerVersion (staged mode) bounds how often the differ pushes
	// one source version of a key to a target that does not converge (it
	// trims or rounds the value); then it stops and reports the key.
	// Default 3; 1..1000.
	MaxPushesPerVersion int `yaml:"max_pushes_per_version"`
	// Breaker (staged mode) is the mass-delete circuit breaker.
	Breaker Breaker `yaml:"breaker"`
	// Readback (staged mode) reads the target back, so that hand edits,
	// deletions and orphans in it are seen. Absent: the differ knows the
	// target only from what the writers report.
	Readback *Readback `yaml:"readback,omitempty"`
	// LedgerSchema is the schema of the writer's bookkeeping tables.
	// Default "oneway".
	LedgerSchema string `yaml:"ledger_schema"`
	// Writer tunes the writer.
	Writer WriterOptions `yaml:"writer"`
	// LedgerURL is the PostgreSQL database holding the fencing ledger of a
	// target that cannot compare versions itself (http, nats, kafka,
	// jsonl); required for those kinds, not allowed for the others.
	LedgerURL Secret `yaml:"ledger_url"`
	// HTTP configures a target of kind "http"; not allowed for other kinds.
	HTTP HTTPTarget `yaml:"http,omitempty"`
	// NATS configures a target of kind "nats".
	NATS NATSTarget `yaml:"nats,omitempty"`
	// Kafka configures a target of kind "kafka".
	Kafka KafkaTarget `yaml:"kafka,omitempty"`
}

// Breaker holds back deletes that would remove a large share of a target,
// until an operator approves them (`oneway approve`).
type Breaker struct {
	// MaxDeleteShare is the share of the target's records that may be
	// deleted within Window without approval. Default 0.1; in (0, 1].
	MaxDeleteShare float64 `yaml:"max_delete_share"`
	// Allow turns the breaker off: deletes never wait for approval.
	Allow bool `yaml:"allow"`
	// Window is the period over which deletes are counted. Default 1h.
	Window Duration `yaml:"window"`
}

// Readback reads a target back into the stage, like a reader reads the
// source: the target table, its owned columns (source.columns) and key,
// with a capture pattern of its own. Only the patterns that see deletions
// (synthetic, window inside its window) see rows deleted by hand.
type Readback struct {
	// Pattern is the capture pattern: "synthetic" (default: a full read
	// each cycle compared with the previous one), "window", "watermark" or
	// "watermark_cdc" ("watermark+cdc" is accepted). cdc is not supported
	// (it would need a replication slot on the target).
	Pattern string `yaml:"pattern"`
	// Column is the pattern's column in the target, as for
	// source.capture.column: required for window, watermark and
	// watermark_cdc, not allowed for synthetic; an owned column.
	Column string `yaml:"column,omitempty"`
	// Window is the span of the window pattern; required (> 0) for it, not
	// allowed with the others.
	Window Duration `yaml:"window,omitempty"`
	// PollInterval is the time between reads. Default 30s; > 0.
	PollInterval Duration `yaml:"poll_interval"`
	// BatchSize is the rows per message. Default 1000; 1..100000.
	BatchSize int `yaml:"batch_size"`
}

// NATSTarget configures a NATS subject as a target.
type NATSTarget struct {
	// Subject is a text/template like the http URL. Default
	// "oneway.out.<pipeline>.<target>".
	Subject string `yaml:"subject"`
	// JetStream publishes and waits for the stream's ack (the subject must
	// be bound to a stream); otherwise core NATS with a flush. Default false.
	JetStream bool `yaml:"jetstream"`
	// NATSAuth: credentials, TLS and inbox prefix of the connection to the
	// target's server, as for the pipeline's nats: section. With JetStream
	// the stream's acks come back on the inbox prefix.
	NATSAuth `yaml:",inline"`
}

// KafkaTarget configures a Kafka topic as a target.
type KafkaTarget struct {
	// Topic is the topic written to. Required for kind "kafka".
	Topic string `yaml:"topic"`
	// KafkaAuth: TLS and SASL to the brokers, as for a kafka source.
	KafkaAuth `yaml:",inline"`
}

// HTTPTarget configures an HTTP REST API target. An API cannot compare
// versions in a transaction, so its fencing ledger lives in a PostgreSQL
// database of yours (LedgerURL), and writers serialise per key there.
type HTTPTarget struct {
	// UpsertMethod is the method of inserts and updates. Default "PUT".
	UpsertMethod string `yaml:"upsert_method"`
	// DeleteMethod is the method of deletes. Default "DELETE".
	DeleteMethod string `yaml:"delete_method"`
	// Headers are sent with every request; values are never printed.
	Headers []Header `yaml:"headers"`
	// Timeout bounds one request. Default 10s.
	Timeout Duration `yaml:"timeout"`
	// MaxAttempts bounds the tries of one request on 429, 5xx and network
	// errors (honouring Retry-After). Default 5.
	MaxAttempts int `yaml:"max_attempts"`
	// RateLimit caps requests per second per writer process; 0 = none.
	RateLimit int `yaml:"rate_limit"`
	// Concurrency is the requests in flight per worker. Default 1.
	Concurrency int `yaml:"concurrency"`
}

// Header is one HTTP header.
type Header struct {
	Name  string `yaml:"name"`
	Value Opaque `yaml:"value"`
}

// Opaque is a secret that is never printed: String, MarshalYAML,
// MarshalJSON and LogValue all give "xxxxx". Value returns it.
type Opaque string

// Value returns the secret.
func (o Opaque) Value() string { return string(o) }

// String is the mask.
func (o Opaque) String() string { return mask }

// GoString is the mask, for %#v.
func (o Opaque) GoString() string { return "config.Opaque(" + mask + ")" }

// MarshalYAML writes the mask.
func (o Opaque) MarshalYAML() (any, error) { return mask, nil }

// MarshalJSON writes the mask.
func (o Opaque) MarshalJSON() ([]byte, error) { return []byte(`"` + mask + `"`), nil }

// LogValue logs the mask.
func (o Opaque) LogValue() slog.Value { return slog.StringValue(mask) }

// WriterOptions tune how a target's writer consumes the stream.
type WriterOptions struct {
	// Workers is the number of concurrent writers. Default 2; 1..64.
	Workers int `yaml:"workers"`
	// MaxAttempts is how often a message is tried. Default 5; >= 1.
	MaxAttempts int `yaml:"max_attempts"`
	// AckWait is how long a message may be in flight. Default 10s; >= 1s. Long work sends InProgress, so this bounds how soon the messages of a crashed writer are redelivered.
	AckWait Duration `yaml:"ack_wait"`
	// FetchBatch is the number of messages per fetch. Default 8; 1..1000.
	FetchBatch int `yaml:"fetch_batch"`
}

// CreatesTable reports whether the target table is created when missing
// (CreateTable, default true).
func (t *Target) CreatesTable() bool {
	return t.CreateTable == nil || *t.CreateTable
}

// Staged reports whether the pipeline runs in staged mode.
func (p *Pipeline) Staged() bool { return p.Mode == ModeStaged }

// Target returns the target with the given name.
func (p *Pipeline) Target(name string) (*Target, bool) {
	for i := range p.Targets {
		if p.Targets[i].Name == name {
			return &p.Targets[i], true
		}
	}
	return nil, false
}

// Print writes the effective configuration (defaults applied, secrets
// redacted) as YAML.
func (p *Pipeline) Print(w io.Writer) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(p); err != nil {
		return fmt.Errorf("print pipeline: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("print pipeline: %w", err)
	}
	return nil
}

// Load reads, expands and validates a pipeline file, taking environment
// variables from the process environment. Errors name file, line and field.
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load pipeline: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// LoadAll reads, expands and validates a pipeline file that may list
// several tables (source.tables): see ParseAll.
func LoadAll(path string) ([]*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load pipeline: %w", err)
	}
	return ParseAll(path, data, os.LookupEnv)
}

// Parse is Load on bytes. name is used as the file name in error messages
// and stored in Pipeline.File. env looks up environment variables; nil
// means os.LookupEnv. A file listing several tables (source.tables) is an
// error naming its pipelines: use ParseAll.
func Parse(name string, data []byte, env func(string) (string, bool)) (*Pipeline, error) {
	ps, err := ParseAll(name, data, env)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, &FieldError{File: name, Field: "source.tables", Msg: fmt.Sprintf(
			"the file describes %d pipelines (%s); this needs one: choose it by name (--pipeline)", len(ps), strings.Join(Names(ps), ", "))}
	}
	return ps[0], nil
}

// ParseAll is Parse for files that may list several tables. A file with
// source.table describes one pipeline, returned alone. A file with
// source.tables describes one pipeline per table, returned in the file's
// order: each is the file with the table's table, key, columns, capture
// overrides and target table filled in, named <pipeline>_<name> (see
// SourceTable), with Group set to the file's name. They share NATS,
// targets and every other setting, and are validated each on its own.
func ParseAll(name string, data []byte, env func(string) (string, bool)) ([]*Pipeline, error) {
	if env == nil {
		env = os.LookupEnv
	}
	root, err := parseYAML(name, data)
	if err != nil {
		return nil, err
	}

	failed, errs := expandEnv(name, root, env)
	pos := newPositions()
	p := &Pipeline{}
	d := &decoder{file: name, pos: pos, skip: failed}
	d.decode(root, reflectValue(p), "")
	errs = append(errs, d.errs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p.File = name
	if !pos.isSet("source.tables") {
		p.applyDefaults(pos)
		if err := p.validate(pos); err != nil {
			return nil, err
		}
		return []*Pipeline{p}, nil
	}
	return p.expandTables(pos)
}

// Names returns the pipelines' names.
func Names(ps []*Pipeline) []string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Pipeline
	}
	return names
}

// yamlLineRe matches the position prefix of yaml.v3 syntax errors.
var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses data into a node tree and returns the single document's
// root node.
func parseYAML(name string, data []byte) (root *yaml.Node, err error) {
	// yaml.v3 reports its own errors by panicking and recovering; this is a
	// safety net against malformed input tripping a panic it does not catch.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &FieldError{File: name, Msg: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{File: name, Msg: "file is empty"}
		}
		return nil, syntaxError(name, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, &FieldError{File: name, Line: extra.Line, Msg: "a pipeline file must contain exactly one YAML document"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(name, err)
	}

	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || isNull(doc.Content[0]) {
		return nil, &FieldError{File: name, Line: doc.Line, Msg: "file is empty"}
	}
	return doc.Content[0], nil
}

// syntaxError turns a yaml.v3 parse error into a *FieldError carrying the
// line number when the message has one.
func syntaxError(name string, err error) error {
	if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
		if line, convErr := strconv.Atoi(m[1]); convErr == nil {
			return &FieldError{File: name, Line: line, Msg: "invalid YAML: " + m[2]}
		}
	}
	return &FieldError{File: name, Msg: fmt.Sprintf("invalid YAML: %v", err)}
}
