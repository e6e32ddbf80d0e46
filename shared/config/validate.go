package config

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults applied to fields that are absent (or null) in a pipeline file.
const (
	defaultMaxBytes        = 1 << 30
	defaultMaxAge          = 168 * time.Hour
	defaultReplicas        = 1
	defaultDuplicateWindow = 2 * time.Minute
	defaultPattern         = PatternWatermark
	defaultBatchSize       = 1000
	defaultPollInterval    = time.Second
	defaultCycleInterval   = time.Minute
	defaultDelete          = "hard"
	defaultOrphans         = "keep"
	defaultLedgerSchema    = "oneway"
	defaultWorkers         = 2
	defaultMaxAttempts     = 5
	defaultAckWait         = 10 * time.Second
	defaultFetchBatch      = 8
	defaultWALBudget       = 10 << 30
	defaultMode            = ModeDirect
	defaultStageSchema     = "oneway_stage"
	defaultScanInterval    = 5 * time.Minute
	defaultMaxPushes       = 3
	defaultMaxDeleteShare  = 0.1
	defaultBreakerWindow   = time.Hour
	defaultReadbackPattern = PatternSynthetic
	defaultReadbackPoll    = 30 * time.Second
)

// Push modes.
const (
	ModeDirect = "direct"
	ModeStaged = "staged"
)

// Capture patterns.
const (
	PatternWatermark    = "watermark"
	PatternCDC          = "cdc"
	PatternSynthetic    = "synthetic"
	PatternWindow       = "window"
	PatternWatermarkCDC = "watermark_cdc"
)

// patternAliases are other spellings of a pattern, rewritten on load.
var patternAliases = map[string]string{"watermark+cdc": PatternWatermarkCDC}

// Patterns lists the implemented capture patterns.
var Patterns = []string{PatternWatermark, PatternSynthetic, PatternWindow, PatternWatermarkCDC, PatternCDC}

// IsCyclePattern reports whether pattern reads a whole table (synthetic) or
// a whole window (window) each cycle and compares it with the last cycle.
func IsCyclePattern(pattern string) bool {
	return pattern == PatternSynthetic || pattern == PatternWindow
}

// Kinds of sources and targets. Sources: postgres, kafka; targets: every kind in targetKinds.
const (
	KindPostgres = "postgres"
	KindSQLite   = "sqlite"
	KindHTTP     = "http"
	KindNATS     = "nats"
	KindKafka    = "kafka"
	KindJSONL    = "jsonl"
	KindMySQL    = "mysql"
	KindCSV      = "csv"
)

// targetKinds lists the target kinds; sideLedgerKinds those that need a
// ledger_url because they cannot compare versions themselves.
var (
	targetKinds     = []string{KindPostgres, KindSQLite, KindHTTP, KindNATS, KindKafka, KindJSONL, KindMySQL}
	sideLedgerKinds = []string{KindHTTP, KindNATS, KindKafka, KindJSONL}
)

// NeedsLedgerURL reports whether targets of kind keep their fencing ledger
// in a separate PostgreSQL database (ledger_url).
func NeedsLedgerURL(kind string) bool { return slices.Contains(sideLedgerKinds, kind) }

// nameRe is the shape of pipeline and target names, which end up in NATS
// subjects, stream names and SQL identifiers.
var nameRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// FieldError is one problem found in a pipeline file.
type FieldError struct {
	File  string // file name as given to Load or Parse
	Line  int    // 1-based line; 0 when unknown
	Field string // dotted path with indexes, e.g. "targets[1].delete"; "" for the whole file
	Msg   string
}

// Error formats the problem as "file:line: field: msg", leaving out the
// parts that are unknown.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":")
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// applyDefaults fills in every field that pos says is absent or null.
func (p *Pipeline) applyDefaults(pos *positions) {
	unset := func(path string) bool { return !pos.isSet(path) }

	if unset("nats.max_bytes") {
		p.NATS.MaxBytes = defaultMaxBytes
	}
	if unset("nats.max_age") {
		p.NATS.MaxAge = Duration{defaultMaxAge}
	}
	if unset("nats.replicas") {
		p.NATS.Replicas = defaultReplicas
	}
	if unset("nats.duplicate_window") {
		p.NATS.DuplicateWindow = Duration{defaultDuplicateWindow}
	}

	if unset("mode") {
		p.Mode = defaultMode
	}
	if unset("stage.schema") {
		p.Stage.Schema = defaultStageSchema
	}
	if unset("stage.scan_interval") {
		p.Stage.ScanInterval = Duration{defaultScanInterval}
	}

	c := &p.Source.Capture
	if unset("source.capture.pattern") {
		c.Pattern = defaultPattern
		if p.Source.Kind == KindKafka {
			c.Pattern = PatternCDC
		}
		if IsRecordSource(p.Source.Kind) {
			c.Pattern = PatternSynthetic
		}
	}
	if p.Source.Kind == KindKafka && unset("source.kafka.group") {
		p.Source.Kafka.Group = "oneway-" + p.Pipeline
	}
	if p.Source.Kind == KindHTTP {
		p.Source.HTTP.defaults(unset)
	}
	for col, typ := range p.Source.Types {
		if canon, err := CanonicalType(typ); err == nil {
			p.Source.Types[col] = canon
		}
	}
	if alias, ok := patternAliases[c.Pattern]; ok {
		c.Pattern = alias
	}
	if unset("source.capture.batch_size") {
		c.BatchSize = defaultBatchSize
	}
	if unset("source.capture.poll_interval") {
		c.PollInterval = Duration{defaultPollInterval}
		if IsCyclePattern(c.Pattern) {
			c.PollInterval = Duration{defaultCycleInterval}
		}
	}
	if c.Pattern == PatternCDC && p.Source.Kind == KindPostgres {
		if unset("source.capture.slot") {
			c.Slot = DefaultCDCName(p.Pipeline)
		}
		if unset("source.capture.publication") {
			c.Publication = DefaultCDCName(p.Pipeline)
		}
		if unset("source.capture.wal_budget") {
			c.WALBudget = defaultWALBudget
		}
	}

	for i := range p.Targets {
		t := &p.Targets[i]
		prefix := indexPath("targets", i) + "."
		if unset(prefix + "table") {
			t.Table = p.Source.Table
		}
		if t.CreateTable == nil {
			yes := true
			t.CreateTable = &yes
		}
		if unset(prefix + "delete") {
			t.Delete = defaultDelete
		}
		if unset(prefix + "orphans") {
			t.Orphans = defaultOrphans
		}
		if unset(prefix + "ledger_schema") {
			t.LedgerSchema = defaultLedgerSchema
		}
		if t.Kind == KindHTTP {
			h := &t.HTTP
			if unset(prefix + "http.upsert_method") {
				h.UpsertMethod = "PUT"
			}
			if unset(prefix + "http.delete_method") {
				h.DeleteMethod = "DELETE"
			}
			if unset(prefix + "http.timeout") {
				h.Timeout = Duration{10 * time.Second}
			}
			if unset(prefix + "http.max_attempts") {
				h.MaxAttempts = 5
			}
			if unset(prefix + "http.concurrency") {
				h.Concurrency = 1
			}
		}
		if unset(prefix + "max_pushes_per_version") {
			t.MaxPushesPerVersion = defaultMaxPushes
		}
		if unset(prefix + "breaker.max_delete_share") {
			t.Breaker.MaxDeleteShare = defaultMaxDeleteShare
		}
		if unset(prefix + "breaker.window") {
			t.Breaker.Window = Duration{defaultBreakerWindow}
		}
		if rb := t.Readback; rb != nil {
			if unset(prefix + "readback.pattern") {
				rb.Pattern = defaultReadbackPattern
			}
			if alias, ok := patternAliases[rb.Pattern]; ok {
				rb.Pattern = alias
			}
			if unset(prefix + "readback.poll_interval") {
				rb.PollInterval = Duration{defaultReadbackPoll}
			}
			if unset(prefix + "readback.batch_size") {
				rb.BatchSize = defaultBatchSize
			}
		}
		w := &t.Writer
		if unset(prefix + "writer.workers") {
			w.Workers = defaultWorkers
		}
		if unset(prefix + "writer.max_attempts") {
			w.MaxAttempts = defaultMaxAttempts
		}
		if unset(prefix + "writer.ack_wait") {
			w.AckWait = Duration{defaultAckWait}
		}
		if unset(prefix + "writer.fetch_batch") {
			w.FetchBatch = defaultFetchBatch
		}
	}
}

// Validate checks a pipeline whose defaults have been applied (as Load and
// Parse do) and returns every problem found, as *FieldError values joined
// with errors.Join. Errors from Validate carry no line numbers; those from
// Load and Parse do.
func (p *Pipeline) Validate() error {
	return p.validate(nil)
}

// checker collects validation problems.
type checker struct {
	file string
	// pipeline is the pipeline's name, from which default names derive.
	pipeline string
	pos      *positions
	errs     []error
}

func (c *checker) add(field, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{File: c.file, Line: c.pos.line(field), Field: field, Msg: fmt.Sprintf(format, args...)})
}

// validate checks p; pos, which may be nil, supplies line numbers.
func (p *Pipeline) validate(pos *positions) error {
	c := &checker{file: p.File, pos: pos, pipeline: p.Pipeline}

	switch {
	case p.Pipeline == "":
		c.add("pipeline", "required")
	case !nameRe.MatchString(p.Pipeline):
		c.add("pipeline", "%q is not a valid name: it must match %s", p.Pipeline, nameRe)
	case p.Pipeline == "out":
		// Its stream would capture oneway.out.>, the default subjects of
		// every NATS target.
		c.add("pipeline", `"out" is reserved: NATS targets publish under oneway.out.`)
	}
	p.NATS.validate(c)
	p.NATS.validateAuth(c)
	p.Source.validate(c)

	if len(p.Targets) == 0 {
		c.add("targets", "at least one target is required")
	}
	names := map[string]int{}
	for i := range p.Targets {
		t := &p.Targets[i]
		path := indexPath("targets", i)
		t.validate(c, path, &p.Source)
		if t.Name == "" {
			continue
		}
		if j, dup := names[t.Name]; dup {
			c.add(path+".name", "duplicate target name %q (also used by targets[%d])", t.Name, j)
			continue
		}
		names[t.Name] = i
	}

	p.validateMode(c)

	if p.Admin.Addr != "" {
		if err := validAddr(p.Admin.Addr); err != nil {
			c.add("admin.addr", "%v", err)
		}
	}
	p.validateProduction(c)
	return errors.Join(c.errs...)
}

// validateMode checks the push mode and, in staged mode, what staged push
// needs of the source, the stage and each target.
func (p *Pipeline) validateMode(c *checker) {
	switch p.Mode {
	case ModeDirect:
		return
	case ModeStaged:
	default:
		c.add("mode", "must be %s or %s, got %q", ModeDirect, ModeStaged, p.Mode)
		return
	}
	if len(p.Source.Columns) == 0 {
		c.add("source.columns", "required in staged mode: the owned columns, which the stage keeps and the target's read-back reads")
	}
	if err := ValidIdentifier(p.Stage.Schema); err != nil {
		c.add("stage.schema", "%v", err)
	}
	if p.Stage.ScanInterval.Duration < time.Second {
		c.add("stage.scan_interval", "must be >= 1s, got %s", p.Stage.ScanInterval)
	}
	for i := range p.Targets {
		t := &p.Targets[i]
		field := func(name string) string { return indexPath("targets", i) + "." + name }
		if t.Kind != "" && t.Kind != KindPostgres && t.Kind != KindSQLite && slices.Contains(targetKinds, t.Kind) {
			c.add(field("kind"), "staged mode supports postgres and sqlite targets only (yet), got %q", t.Kind)
		}
		if t.Orphans == "delete" && t.Delete == "none" {
			c.add(field("orphans"), `"delete" needs a delete policy that deletes (hard or soft), but delete is "none"`)
		}
	}
}

// validateStaged checks the target settings of staged push (in either
// mode: a value is wrong or right whatever the mode).
func (t *Target) validateStaged(c *checker, field func(string) string, src *Source) {
	if t.MaxPushesPerVersion < 1 || t.MaxPushesPerVersion > 1000 {
		c.add(field("max_pushes_per_version"), "must be between 1 and 1000, got %d", t.MaxPushesPerVersion)
	}
	if b := t.Breaker; b.MaxDeleteShare <= 0 || b.MaxDeleteShare > 1 {
		c.add(field("breaker.max_delete_share"), "must be > 0 and <= 1, got %g", b.MaxDeleteShare)
	}
	if t.Breaker.Window.Duration <= 0 {
		c.add(field("breaker.window"), "must be > 0, got %s", t.Breaker.Window)
	}
	if rb := t.Readback; rb != nil {
		rb.validate(c, field, src)
	}
}

func (n *NATS) validate(c *checker) {
	if n.MaxBytes <= 0 {
		c.add("nats.max_bytes", "must be > 0, got %d", n.MaxBytes)
	}
	if n.MaxAge.Duration < 0 {
		c.add("nats.max_age", "must be >= 0 (0 means unlimited), got %s", n.MaxAge)
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		c.add("nats.replicas", "must be between 1 and 5, got %d", n.Replicas)
	}
	switch {
	case n.DuplicateWindow.Duration <= 0:
		c.add("nats.duplicate_window", "must be > 0, got %s", n.DuplicateWindow)
	case n.MaxAge.Duration > 0 && n.DuplicateWindow.Duration > n.MaxAge.Duration:
		c.add("nats.duplicate_window", "must not be longer than nats.max_age (%s), got %s", n.MaxAge, n.DuplicateWindow)
	}
}

func (s *Source) validate(c *checker) {
	switch s.Kind {
	case "":
		c.add("source.kind", "required")
	case KindPostgres, KindKafka, KindSQLite, KindMySQL, KindCSV, KindJSONL, KindHTTP:
	default:
		c.add("source.kind", "unsupported kind %q (supported: %s, %s, %s, %s, %s, %s, %s)", s.Kind,
			KindPostgres, KindSQLite, KindMySQL, KindKafka, KindCSV, KindJSONL, KindHTTP)
	}
	switch {
	case s.Kind == KindKafka && s.URL != "":
		c.add("source.url", "not used by kind %q: its brokers go in source.kafka.brokers", KindKafka)
	case s.Kind != KindKafka && s.URL == "":
		c.add("source.url", "required")
	}
	if s.Kind == KindKafka {
		s.validateKafka(c)
	} else if IsRecordSource(s.Kind) {
		s.validateRecord(c)
	} else {
		if len(s.Types) > 0 {
			c.add("source.types", "only for kind %q: a %s source reads its column types from its catalog", KindKafka, s.Kind)
		}
		if !reflect.DeepEqual(s.Kafka, KafkaSource{}) {
			c.add("source.kafka", "only allowed when kind is %q", KindKafka)
		}
		if !reflect.DeepEqual(s.HTTP, HTTPSource{}) {
			c.add("source.http", "only allowed when kind is %q", KindHTTP)
		}
	}
	if s.Table == "" {
		c.add("source.table", "required")
	} else if _, _, err := SplitTable(s.Table); err != nil {
		c.add("source.table", "%v", err)
	}
	if s.Kind == KindSQLite || s.Kind == KindMySQL {
		s.validateSQL(c)
	}

	if len(s.Key) == 0 {
		c.add("source.key", "at least one key column is required")
	}
	checkColumns(c, "source.key", s.Key)
	checkColumns(c, "source.columns", s.Columns)
	if len(s.Columns) > 0 {
		for i, k := range s.Key {
			if k != "" && !slices.Contains(s.Columns, k) {
				c.add(indexPath("source.key", i), "key column %q is not in source.columns", k)
			}
		}
	}
	s.Capture.validate(c, s)
}

// checkColumns checks that every column in cols is a valid identifier and
// that none appears twice.
func checkColumns(c *checker, path string, cols []string) {
	seen := map[string]int{}
	for i, col := range cols {
		p := indexPath(path, i)
		if err := ValidIdentifier(col); err != nil {
			c.add(p, "%v", err)
			continue
		}
		if j, dup := seen[col]; dup {
			c.add(p, "duplicate column %q (also %s)", col, indexPath(path, j))
			continue
		}
		seen[col] = i
	}
}

func (cp *Capture) validate(c *checker, s *Source) {
	const f = "source.capture."
	// column checks the pattern's column: required or not allowed, a valid
	// identifier, and owned when the owned columns are listed.
	column := func(required bool, what string) {
		switch {
		case !required && cp.Column != "":
			c.add(f+"column", "not used by the %s pattern; remove it", cp.Pattern)
		case !required:
		case cp.Column == "":
			c.add(f+"column", "required for the %s pattern (the %s)", cp.Pattern, what)
		case ValidIdentifier(cp.Column) != nil:
			c.add(f+"column", "%v", ValidIdentifier(cp.Column))
		case len(s.Columns) > 0 && !slices.Contains(s.Columns, cp.Column):
			c.add(f+"column", "%s %q is not in source.columns", what, cp.Column)
		}
	}
	implemented := true
	switch cp.Pattern {
	case PatternWatermark:
		column(true, "watermark column")
	case PatternWatermarkCDC:
		column(true, "watermark column")
	case PatternWindow:
		column(true, "date or timestamp column the window slides over")
	case PatternSynthetic:
		column(false, "")
	case PatternCDC:
		column(false, "")
	default:
		implemented = false
		c.add(f+"pattern", "unknown capture pattern %q (supported: %s)", cp.Pattern, strings.Join(Patterns, ", "))
	}
	if cp.BatchSize < 1 || cp.BatchSize > 100_000 {
		c.add(f+"batch_size", "must be between 1 and 100000, got %d", cp.BatchSize)
	}
	if cp.PollInterval.Duration <= 0 {
		c.add(f+"poll_interval", "must be > 0, got %s", cp.PollInterval)
	}
	if cp.Lookback.Duration < 0 {
		c.add(f+"lookback", "must be >= 0, got %s", cp.Lookback)
	}
	switch {
	case cp.Pattern == PatternWindow && cp.Window.Duration <= 0:
		c.add(f+"window", "required for the window pattern: a span > 0 such as 720h, got %s", cp.Window)
	case cp.Pattern != PatternWindow && implemented && cp.Window.Duration != 0:
		c.add(f+"window", "only for the window pattern (pattern is %s)", cp.Pattern)
	}
	switch {
	case cp.Overlap.Duration < 0:
		c.add(f+"overlap", "must be >= 0, got %s", cp.Overlap)
	case cp.Pattern != PatternWatermarkCDC && implemented && cp.Overlap.Duration != 0:
		c.add(f+"overlap", "only for the %s pattern (pattern is %s)", PatternWatermarkCDC, cp.Pattern)
	}
	if cp.Pattern == PatternCDC && s.Kind == KindKafka {
		for _, n := range []struct {
			field string
			set   bool
		}{{"slot", cp.Slot != ""}, {"publication", cp.Publication != ""}, {"wal_budget", cp.WALBudget != 0}} {
			if n.set {
				c.add(f+n.field, "only for a %s source's %s pattern (the source is %s)", KindPostgres, PatternCDC, KindKafka)
			}
		}
	} else if cp.Pattern == PatternCDC {
		for _, n := range []struct{ field, value string }{{"slot", cp.Slot}, {"publication", cp.Publication}} {
			// A default derived from a bad pipeline name is reported there;
			// a source of an unknown kind got no default.
			if s.Kind == KindPostgres && !cdcNameRe.MatchString(n.value) && n.value != DefaultCDCName(c.pipeline) {
				c.add(f+n.field, "must be 1 to 63 characters of a-z, 0-9 and _, not starting with a digit, got %q", n.value)
			}
		}
		if cp.WALBudget < 0 {
			c.add(f+"wal_budget", "must be >= 0 bytes (0 disables the alert), got %d", cp.WALBudget)
		}
		if cp.DeleteFeed.SoftDeleteColumn != "" {
			c.add(f+"delete_feed.soft_delete_column", "not used by the cdc pattern: it sees deletes in the replication stream")
		}
	} else if implemented {
		for _, n := range []struct {
			field string
			set   bool
		}{{"slot", cp.Slot != ""}, {"publication", cp.Publication != ""}, {"wal_budget", cp.WALBudget != 0}} {
			if n.set {
				c.add(f+n.field, "only for the %s pattern (pattern is %s)", PatternCDC, cp.Pattern)
			}
		}
	}
	cp.DeleteFeed.validate(c, s, cp.Pattern, implemented)
}

// cdcNameRe is the shape of a replication slot or publication name.
var cdcNameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// DefaultCDCName is the default slot and publication name of a pipeline's
// cdc pattern.
func DefaultCDCName(pipeline string) string { return "oneway_" + pipeline }

func (d *DeleteFeed) validate(c *checker, s *Source, pattern string, implemented bool) {
	const f = "source.capture.delete_feed."
	if col := d.SoftDeleteColumn; col != "" {
		switch {
		case ValidIdentifier(col) != nil:
			c.add(f+"soft_delete_column", "%v", ValidIdentifier(col))
		case slices.Contains(s.Key, col):
			c.add(f+"soft_delete_column", "%q is a key column; a deleted mark needs a column of its own", col)
		case col == s.Capture.Column && pattern != PatternSynthetic:
			c.add(f+"soft_delete_column", "%q is the capture column; a deleted mark needs a column of its own", col)
		}
	}
	watermark := pattern == PatternWatermark || pattern == PatternWatermarkCDC
	switch {
	case d.Table == "" && d.Column != "":
		c.add(f+"column", "only with delete_feed.table (the pointer column of the deleted-records table)")
	case d.Table == "":
	case implemented && !watermark:
		c.add(f+"table", "only for the %s and %s patterns: %s finds deletes itself", PatternWatermark, PatternWatermarkCDC, pattern)
	default:
		if _, _, err := SplitTable(d.Table); err != nil {
			c.add(f+"table", "%v", err)
		} else if d.Table == s.Table {
			c.add(f+"table", "is the source table; use soft_delete_column to mark deleted rows in it")
		}
		switch {
		case d.Column == "":
			c.add(f+"column", "required with delete_feed.table: the pointer column, of the same kind as the watermark column")
		case ValidIdentifier(d.Column) != nil:
			c.add(f+"column", "%v", ValidIdentifier(d.Column))
		}
	}
}

func (t *Target) validate(c *checker, path string, src *Source) {
	field := func(name string) string { return path + "." + name }

	switch {
	case t.Name == "":
		c.add(field("name"), "required")
	case !nameRe.MatchString(t.Name):
		c.add(field("name"), "%q is not a valid name: it must match %s", t.Name, nameRe)
	}
	switch {
	case t.Kind == "":
		c.add(field("kind"), "required")
	case !slices.Contains(targetKinds, t.Kind):
		c.add(field("kind"), "unsupported kind %q (supported: %s)", t.Kind, strings.Join(targetKinds, ", "))
	}
	if t.Kind == KindHTTP {
		t.HTTP.validate(c, field("http"))
	} else if !reflect.DeepEqual(t.HTTP, HTTPTarget{}) {
		c.add(field("http"), "only allowed when kind is %q", KindHTTP)
	}
	if t.Kind != KindNATS && t.NATS != (NATSTarget{}) {
		c.add(field("nats"), "only allowed when kind is %q", KindNATS)
	} else if t.Kind == KindNATS {
		t.NATS.NATSAuth.validate(c, field("nats"))
	}
	switch {
	case t.Kind == KindKafka && t.Kafka.Topic == "":
		c.add(field("kafka.topic"), "required for kind %q", KindKafka)
		t.Kafka.KafkaAuth.validate(c, field("kafka"))
	case t.Kind == KindKafka:
		t.Kafka.KafkaAuth.validate(c, field("kafka"))
	case t.Kind != KindKafka && t.Kafka != (KafkaTarget{}):
		c.add(field("kafka"), "only allowed when kind is %q", KindKafka)
	}
	switch {
	case NeedsLedgerURL(t.Kind) && t.LedgerURL == "":
		c.add(field("ledger_url"), "required for kind %q: the PostgreSQL database that holds its fencing ledger (it cannot compare versions itself)", t.Kind)
	case !NeedsLedgerURL(t.Kind) && t.Kind != "" && t.LedgerURL != "":
		c.add(field("ledger_url"), "not used by kind %q: its ledger lives in the target itself", t.Kind)
	}
	if t.URL == "" {
		c.add(field("url"), "required")
	}
	// A table inherited from the source was checked there already.
	if t.Table == "" && src.Table != "" {
		c.add(field("table"), "must not be empty (leave it out to use the source table)")
	} else if t.Table != "" && t.Table != src.Table {
		if _, _, err := SplitTable(t.Table); err != nil {
			c.add(field("table"), "%v", err)
		}
	}

	switch t.Delete {
	case "hard", "none":
		if t.SoftDeleteColumn != "" {
			c.add(field("soft_delete_column"), "only allowed when delete is \"soft\" (delete is %q)", t.Delete)
		}
	case "soft":
		switch {
		case t.SoftDeleteColumn == "":
			c.add(field("soft_delete_column"), "required when delete is \"soft\"")
		case ValidIdentifier(t.SoftDeleteColumn) != nil:
			c.add(field("soft_delete_column"), "%v", ValidIdentifier(t.SoftDeleteColumn))
		case slices.Contains(src.Key, t.SoftDeleteColumn) || slices.Contains(src.Columns, t.SoftDeleteColumn):
			c.add(field("soft_delete_column"), "%q is a source column; the soft delete marker needs a column of its own", t.SoftDeleteColumn)
		}
	default:
		c.add(field("delete"), "must be one of hard, soft, none; got %q", t.Delete)
	}

	switch t.Orphans {
	case "keep", "delete", "report":
	default:
		c.add(field("orphans"), "must be one of keep, delete, report; got %q", t.Orphans)
	}
	if err := ValidIdentifier(t.LedgerSchema); err != nil {
		c.add(field("ledger_schema"), "%v", err)
	}

	t.validateStaged(c, field, src)

	w := &t.Writer
	if w.Workers < 1 || w.Workers > 64 {
		c.add(field("writer.workers"), "must be between 1 and 64, got %d", w.Workers)
	}
	if w.MaxAttempts < 1 {
		c.add(field("writer.max_attempts"), "must be >= 1, got %d", w.MaxAttempts)
	}
	if w.AckWait.Duration < time.Second {
		c.add(field("writer.ack_wait"), "must be >= 1s, got %s", w.AckWait)
	}
	if w.FetchBatch < 1 || w.FetchBatch > 1000 {
		c.add(field("writer.fetch_batch"), "must be between 1 and 1000, got %d", w.FetchBatch)
	}
}

func (h *HTTPTarget) validate(c *checker, path string) {
	field := func(name string) string { return path + "." + name }
	methods := []string{"POST", "PUT", "PATCH", "DELETE"}
	if !slices.Contains(methods, h.UpsertMethod) {
		c.add(field("upsert_method"), "must be one of %v, got %q", methods, h.UpsertMethod)
	}
	if h.DeleteMethod != "" && !slices.Contains(methods, h.DeleteMethod) {
		c.add(field("delete_method"), "must be one of %v or empty, got %q", methods, h.DeleteMethod)
	}
	for i, hd := range h.Headers {
		if hd.Name == "" || strings.ContainsAny(hd.Name, " :\r\n") {
			c.add(indexPath(field("headers"), i)+".name", "not a valid header name: %q", hd.Name)
		}
	}
	if h.Timeout.Duration <= 0 {
		c.add(field("timeout"), "must be > 0, got %s", h.Timeout)
	}
	if h.MaxAttempts < 1 {
		c.add(field("max_attempts"), "must be >= 1, got %d", h.MaxAttempts)
	}
	if h.RateLimit < 0 {
		c.add(field("rate_limit"), "must be >= 0, got %d", h.RateLimit)
	}
	if h.Concurrency < 1 || h.Concurrency > 256 {
		c.add(field("concurrency"), "must be between 1 and 256, got %d", h.Concurrency)
	}
}

// validAddr checks that addr is host:port with a numeric port.
func validAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port: %w", err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("must be host:port with a numeric port, got port %q", port)
	}
	return nil
}

// validate checks a target's read-back; src is the pipeline's source,
// whose key and owned columns the read-back reads.
func (rb *Readback) validate(c *checker, field func(string) string, src *Source) {
	needsColumn := true
	switch rb.Pattern {
	case PatternSynthetic:
		needsColumn = false
	case PatternWindow, PatternWatermark, PatternWatermarkCDC:
	case PatternCDC:
		c.add(field("readback.pattern"), "cdc is not supported for a read-back (it would need a replication slot on the target); use %s, %s, %s or %s",
			PatternSynthetic, PatternWindow, PatternWatermark, PatternWatermarkCDC)
		return
	default:
		c.add(field("readback.pattern"), "unknown capture pattern %q (supported for a read-back: %s, %s, %s, %s)",
			rb.Pattern, PatternSynthetic, PatternWindow, PatternWatermark, PatternWatermarkCDC)
		return
	}
	switch {
	case !needsColumn && rb.Column != "":
		c.add(field("readback.column"), "not used by the %s pattern; remove it", rb.Pattern)
	case !needsColumn:
	case rb.Column == "":
		c.add(field("readback.column"), "required for the %s pattern", rb.Pattern)
	case ValidIdentifier(rb.Column) != nil:
		c.add(field("readback.column"), "%v", ValidIdentifier(rb.Column))
	case len(src.Columns) > 0 && !slices.Contains(src.Columns, rb.Column):
		c.add(field("readback.column"), "%q is not in source.columns (a read-back reads the owned columns only)", rb.Column)
	}
	switch {
	case rb.Pattern == PatternWindow && rb.Window.Duration <= 0:
		c.add(field("readback.window"), "required for the window pattern: a span > 0 such as 720h, got %s", rb.Window)
	case rb.Pattern != PatternWindow && rb.Window.Duration != 0:
		c.add(field("readback.window"), "only for the window pattern (pattern is %s)", rb.Pattern)
	}
	if rb.PollInterval.Duration <= 0 {
		c.add(field("readback.poll_interval"), "must be > 0, got %s", rb.PollInterval)
	}
	if rb.BatchSize < 1 || rb.BatchSize > 100_000 {
		c.add(field("readback.batch_size"), "must be between 1 and 100000, got %d", rb.BatchSize)
	}
}
