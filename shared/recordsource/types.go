package recordsource

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/oneway-sync/oneway/shared/source"
)

// Column is one declared column of a record source: its name (the CSV
// header, the JSON field) and its PostgreSQL type as config.CanonicalType
// spells it.
type Column struct {
	Name string
	Type string
}

// conv is how one column's raw values become the text PostgreSQL prints
// for its type.
type conv struct {
	kind  kind
	scale int // numeric(p,s): s; timestamps: the fraction digits; -1 none
}

type kind uint8

const (
	kText kind = iota
	kInt
	kNumeric
	kFloat64
	kFloat32
	kBool
	kDate
	kTimestamp
	kTimestampTZ
	kUUID
	kJSON
)

var (
	modsRe    = regexp.MustCompile(`^([a-z ]+?)(?:\((\d+)(?:,(\d+))?\))?( with(?:out)? time zone)?$`)
	decimalRe = regexp.MustCompile(`^[+-]?(\d+\.?\d*|\.\d+)$`)
	uuidRe    = regexp.MustCompile(`^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$`)
)

// converter returns the conversion of a column type (as
// config.CanonicalType spells it), or an error naming what is supported.
func converter(typ string) (conv, error) {
	m := modsRe.FindStringSubmatch(typ)
	if m == nil {
		return conv{}, fmt.Errorf("type %q is not supported by file and HTTP sources", typ)
	}
	base := m[1] + m[4]
	mod := -1
	if m[3] != "" {
		mod, _ = strconv.Atoi(m[3])
	} else if m[2] != "" && strings.HasPrefix(base, "timestamp") {
		mod, _ = strconv.Atoi(m[2])
	} else if m[2] != "" && base == "numeric" {
		mod = 0 // numeric(p) is numeric(p,0)
	}
	switch base {
	case "text", "character varying":
		return conv{kind: kText, scale: -1}, nil
	case "smallint", "integer", "bigint":
		return conv{kind: kInt, scale: -1}, nil
	case "numeric":
		return conv{kind: kNumeric, scale: mod}, nil
	case "double precision":
		return conv{kind: kFloat64, scale: -1}, nil
	case "real":
		return conv{kind: kFloat32, scale: -1}, nil
	case "boolean":
		return conv{kind: kBool, scale: -1}, nil
	case "date":
		return conv{kind: kDate, scale: -1}, nil
	case "timestamp without time zone", "timestamp":
		return conv{kind: kTimestamp, scale: mod}, nil
	case "timestamp with time zone":
		return conv{kind: kTimestampTZ, scale: mod}, nil
	case "uuid":
		return conv{kind: kUUID, scale: -1}, nil
	case "json":
		return conv{kind: kJSON, scale: -1}, nil
	}
	return conv{}, fmt.Errorf("type %q is not supported by file and HTTP sources (supported: text, varchar(n), smallint, integer, bigint, numeric(p,s), real, double precision, boolean, date, timestamp(p), timestamptz(p), uuid, json)", typ)
}

// fromString converts the text of a value (a CSV field, a JSON string) to
// the text PostgreSQL prints for the type. An empty string is NULL for
// every type but text.
func (c conv) fromString(s string) ([]byte, error) {
	if s == "" && c.kind != kText {
		return nil, nil
	}
	switch c.kind {
	case kText, kJSON:
		return []byte(s), nil
	case kInt:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", s)
		}
		return strconv.AppendInt(nil, n, 10), nil
	case kNumeric:
		return numericText(strings.TrimSpace(s), c.scale)
	case kFloat64, kFloat32:
		bits := 64
		if c.kind == kFloat32 {
			bits = 32
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(s), bits)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", s)
		}
		return source.FloatText(f, bits), nil
	case kBool:
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "t", "true", "1", "yes", "y", "on":
			return []byte("t"), nil
		case "f", "false", "0", "no", "n", "off":
			return []byte("f"), nil
		}
		return nil, fmt.Errorf("%q is not a boolean", s)
	case kUUID:
		u := strings.ToLower(strings.TrimSpace(s))
		if !uuidRe.MatchString(u) {
			return nil, fmt.Errorf("%q is not a uuid", s)
		}
		u = strings.ReplaceAll(u, "-", "")
		return []byte(u[:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:]), nil
	}
	t, err := parseTime(strings.TrimSpace(s))
	if err != nil {
		return nil, err
	}
	return c.timeText(t), nil
}

// fromJSON converts one JSON value; null is NULL.
func (c conv) fromJSON(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("not a JSON string: %w", err)
		}
		if c.kind == kJSON {
			return append([]byte{}, raw...), nil
		}
		if s == "" && c.kind == kText {
			return []byte{}, nil
		}
		return c.fromString(s)
	case 't', 'f':
		switch c.kind {
		case kBool:
			return c.fromString(string(raw))
		case kText, kJSON:
			return append([]byte{}, raw...), nil
		}
		return nil, fmt.Errorf("a boolean (%s) where a %s is expected", raw, c.name())
	case '{', '[':
		if c.kind == kText || c.kind == kJSON {
			var b bytes.Buffer
			if err := json.Compact(&b, raw); err != nil {
				return nil, fmt.Errorf("not JSON: %w", err)
			}
			return b.Bytes(), nil
		}
		return nil, fmt.Errorf("an object or array where a %s is expected", c.name())
	}
	// A number.
	switch c.kind {
	case kInt, kNumeric, kFloat64, kFloat32, kText, kJSON:
		if c.kind == kInt && bytes.ContainsAny(raw, ".eE") {
			f, err := strconv.ParseFloat(string(raw), 64)
			if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<62 {
				return nil, fmt.Errorf("%s is not an integer", raw)
			}
			return strconv.AppendInt(nil, int64(f), 10), nil
		}
		if c.kind == kNumeric && bytes.ContainsAny(raw, "eE") {
			r, ok := new(big.Rat).SetString(string(raw))
			if !ok {
				return nil, fmt.Errorf("%s is not a number", raw)
			}
			return c.fromString(r.FloatString(max(c.scale, 10)))
		}
		if c.kind == kText || c.kind == kJSON {
			return append([]byte{}, raw...), nil
		}
		return c.fromString(string(raw))
	}
	return nil, fmt.Errorf("a number (%s) where a %s is expected", raw, c.name())
}

func (c conv) name() string {
	return [...]string{"text", "integer", "numeric", "double precision", "real", "boolean", "date",
		"timestamp", "timestamp with time zone", "uuid", "json"}[c.kind]
}

// numericText prints a decimal as PostgreSQL prints a numeric: with scale
// digits after the point when the type has a scale (rounded half away
// from zero), else as written without a leading '+' or leading zeros.
func numericText(s string, scale int) ([]byte, error) {
	if !decimalRe.MatchString(s) {
		return nil, fmt.Errorf("%q is not a decimal number", s)
	}
	if scale >= 0 {
		r, _ := new(big.Rat).SetString(s)
		out := r.FloatString(scale)
		if strings.Trim(out, "-0.") == "" {
			out = strings.TrimPrefix(out, "-")
		}
		return []byte(out), nil
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimLeft(s, "+-")
	intPart, frac, hasPoint := strings.Cut(s, ".")
	intPart = strings.TrimLeft(intPart, "0")
	if intPart == "" {
		intPart = "0"
	}
	out := intPart
	if hasPoint && frac != "" {
		out += "." + frac
	}
	if neg && strings.Trim(out, "0.") != "" {
		out = "-" + out
	}
	return []byte(out), nil
}

// timeLayouts are the accepted forms of a date or time: RFC 3339 and ISO
// 8601 with a space or a T, with or without fraction and zone. A time
// without a zone is UTC.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02T15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02",
}

func parseTime(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date or time (RFC 3339 or YYYY-MM-DD[ HH:MM:SS[.ffffff]][zone])", s)
}

// timeText prints t as PostgreSQL prints the type (UTC, microseconds at
// most, trailing zeros of the fraction dropped).
func (c conv) timeText(t time.Time) []byte {
	p := 6
	if c.scale >= 0 && c.scale < 6 {
		p = c.scale
	}
	t = t.UTC().Round(time.Duration(math.Pow10(9 - p)))
	switch c.kind {
	case kDate:
		return []byte(t.Format("2006-01-02"))
	case kTimestampTZ:
		return []byte(t.Format("2006-01-02 15:04:05.999999") + "+00")
	}
	return []byte(t.Format("2006-01-02 15:04:05.999999"))
}
