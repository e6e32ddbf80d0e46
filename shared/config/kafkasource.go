package config

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// kafkaTopicRe is the shape Kafka allows for a topic name.
var kafkaTopicRe = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// validateKafka checks a source of kind kafka: brokers, topic and group,
// the owned columns and their types, and the capture pattern (cdc only).
func (s *Source) validateKafka(c *checker) {
	const f = "source.kafka."
	k := &s.Kafka
	if len(k.Brokers) == 0 {
		c.add(f+"brokers", "at least one broker (host:port) is required for kind %q", KindKafka)
	}
	for i, b := range k.Brokers {
		if err := validAddr(b); err != nil {
			c.add(indexPath(f+"brokers", i), "%v", err)
		}
	}
	switch {
	case k.Topic == "":
		c.add(f+"topic", "required for kind %q: the topic of Debezium change events", KindKafka)
	case !kafkaTopicRe.MatchString(k.Topic):
		c.add(f+"topic", "%q is not a Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-')", k.Topic)
	}
	k.KafkaAuth.validate(c, "source.kafka")
	switch {
	case k.Group == "":
		c.add(f+"group", "must not be empty (leave it out for oneway-<pipeline>)")
	case len(k.Group) > 255 || strings.ContainsFunc(k.Group, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		c.add(f+"group", "%q is not a usable consumer group name (at most 255 characters, no control characters)", clip(k.Group))
	}

	if len(s.Columns) == 0 {
		c.add("source.columns", "required for kind %q: the owned columns (a Debezium event carries no catalog), each with its type in source.types", KindKafka)
	}
	for i, col := range s.Columns {
		if _, ok := s.Types[col]; !ok && ValidIdentifier(col) == nil {
			c.add(indexPath("source.columns", i), "column %q has no type in source.types", col)
		}
	}
	if len(s.Types) == 0 && len(s.Columns) > 0 {
		c.add("source.types", "required for kind %q: the PostgreSQL type of each owned column, e.g. {id: bigint, name: text}", KindKafka)
	}
	cols := make([]string, 0, len(s.Types))
	for col := range s.Types {
		cols = append(cols, col)
	}
	slices.Sort(cols) // a stable order of errors
	for _, col := range cols {
		field := "source.types." + col
		if !slices.Contains(s.Columns, col) {
			c.add(field, "%q is not in source.columns", col)
			continue
		}
		if _, err := CanonicalType(s.Types[col]); err != nil {
			c.add(field, "%v", err)
		}
	}

	if p := s.Capture.Pattern; p != PatternCDC {
		c.add("source.capture.pattern", "kind %q reads change events: the pattern is %s (leave it out), got %q", KindKafka, PatternCDC, p)
	}
	if s.Capture.Lookback.Duration != 0 {
		c.add("source.capture.lookback", "not used by kind %q", KindKafka)
	}
	if s.Capture.DeleteFeed.SoftDeleteColumn != "" {
		c.add("source.capture.delete_feed.soft_delete_column", "not used by kind %q: deletes are events of their own (op d)", KindKafka)
	}
}

// typeAliases maps other spellings of a type's base name to the spelling
// of PostgreSQL's format_type.
var typeAliases = map[string]string{
	"int2": "smallint", "int": "integer", "int4": "integer", "int8": "bigint",
	"bool": "boolean", "float4": "real", "float8": "double precision", "float": "double precision",
	"decimal": "numeric", "varchar": "character varying", "char": "character", "bpchar": "character",
	"timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone",
	"time": "time without time zone",
}

// canonicalTypes are the types a source without a catalog may declare, by
// their base name, with how many modifiers each takes (at most).
var canonicalTypes = map[string]int{
	"smallint": 0, "integer": 0, "bigint": 0, "boolean": 0, "real": 0, "double precision": 0,
	"numeric": 2, "text": 0, "character varying": 1, "character": 1, "date": 0,
	"timestamp without time zone": 1, "timestamp with time zone": 1, "time without time zone": 1,
	"json": 0, "jsonb": 0, "uuid": 0, "bytea": 0,
}

// typeRe splits a type into base name and modifiers; timestamp(3) with time
// zone puts them in the middle.
var typeRe = regexp.MustCompile(`^([a-z][a-z0-9 ]*?)\s*(?:\(\s*([0-9]+)\s*(?:,\s*([0-9]+)\s*)?\))?\s*((?:with|without)\s+time\s+zone)?$`)

// CanonicalType returns a PostgreSQL type name as PostgreSQL's format_type
// spells it ("varchar(40)" → "character varying(40)", "timestamptz" →
// "timestamp with time zone", "timestamp(3)" → "timestamp(3) without time
// zone"), which is what a PostgreSQL source puts in its batches. Only the
// types a kafka source can convert are accepted: smallint, integer, bigint,
// boolean, real, double precision, numeric[(p[,s])], text, character
// varying[(n)], character[(n)], date, timestamp[(p)] with or without time
// zone, time[(p)], json, jsonb, uuid, bytea (and their usual aliases).
func CanonicalType(typ string) (string, error) {
	t := strings.Join(strings.Fields(strings.ToLower(typ)), " ")
	m := typeRe.FindStringSubmatch(t)
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("type %q %s (supported: smallint, integer, bigint, boolean, real, double precision, numeric(p,s), text, varchar(n), char(n), date, timestamp(p), timestamptz(p), time(p), json, jsonb, uuid, bytea)", typ, why)
	}
	if m == nil {
		return bad("is not a type name")
	}
	base, zone := m[1], m[4]
	if a, ok := typeAliases[base]; ok {
		base = a
	}
	if zone != "" {
		switch base {
		case "timestamp without time zone":
			base = "timestamp " + zone
		case "time without time zone":
			if zone != "without time zone" {
				return bad("is not supported (time with time zone)")
			}
		default:
			return bad("is not a type name")
		}
	}
	nmods, ok := canonicalTypes[base]
	if !ok {
		return bad("is not supported")
	}
	var mods []int
	for _, s := range m[2:4] {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return bad("has a modifier out of range")
		}
		mods = append(mods, n)
	}
	if len(mods) > nmods {
		return bad(fmt.Sprintf("takes at most %d modifier(s)", nmods))
	}
	switch {
	case len(mods) == 0:
	case base == "numeric":
		if mods[0] < 1 || mods[0] > 1000 || (len(mods) == 2 && mods[1] > mods[0]) {
			return bad("needs 1 <= precision <= 1000 and 0 <= scale <= precision")
		}
	case strings.HasPrefix(base, "time"):
		if mods[0] > 6 {
			return bad("has a precision above 6")
		}
	default:
		if mods[0] < 1 || mods[0] > 10485760 {
			return bad("needs a length between 1 and 10485760")
		}
	}
	if base == "character" && len(mods) == 0 {
		mods = []int{1} // char alone is char(1)
	}
	if len(mods) == 0 {
		return base, nil
	}
	strs := make([]string, len(mods))
	for i, n := range mods {
		strs[i] = strconv.Itoa(n)
	}
	list := "(" + strings.Join(strs, ",") + ")"
	if name, rest, ok := strings.Cut(base, " with"); ok && strings.HasPrefix(base, "time") {
		return name + list + " with" + rest, nil // timestamp(3) with[out] time zone
	}
	return base + list, nil
}
