package sqlsource

import (
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/oneway-sync/oneway/shared/source"
)

// kind is how a column's driver values become the text PostgreSQL prints
// for the type the column is reported as.
type kind uint8

const (
	kText        kind = iota // text as stored (numbers in decimal)
	kInt                     // decimal digits
	kNumeric                 // exact decimal text
	kFloat64                 // double precision
	kFloat32                 // real
	kBool                    // t / f
	kBytea                   // \x hex
	kTimestamp               // YYYY-MM-DD HH:MM:SS[.ffffff]
	kTimestampTZ             // the same, in UTC, with +00
	kDate                    // YYYY-MM-DD
	kTime                    // HH:MM:SS[.ffffff]
	kJSON                    // the document as stored
)

// pgType maps a SQLite declared type to the PostgreSQL type the source
// reports and the kind of its values. SQLite's own affinity rules decide
// (https://sqlite.org/datatype3.html §3.1), refined for the names that
// carry a meaning beyond affinity: BOOLEAN, DATETIME, TIMESTAMP, DATE,
// TIME and JSON. DATETIME and TIMESTAMP hold UTC times (as
// CURRENT_TIMESTAMP and strftime write them) and are reported as
// timestamp with time zone.
func sqliteType(decl string) (string, kind) {
	t := strings.ToLower(strings.TrimSpace(decl))
	switch {
	case strings.Contains(t, "bool"):
		return "boolean", kBool
	case strings.Contains(t, "datetime"), strings.Contains(t, "timestamp"):
		return "timestamp with time zone", kTimestampTZ
	case strings.Contains(t, "date"):
		return "date", kDate
	case strings.Contains(t, "json"):
		return "jsonb", kJSON
	case strings.Contains(t, "int"):
		return "bigint", kInt
	case strings.Contains(t, "char"), strings.Contains(t, "clob"), strings.Contains(t, "text"):
		return "text", kText
	case t == "time":
		return "time without time zone", kTime
	case strings.Contains(t, "blob"):
		return "bytea", kBytea
	case strings.Contains(t, "real"), strings.Contains(t, "floa"), strings.Contains(t, "doub"):
		return "double precision", kFloat64
	case strings.Contains(t, "numeric"), strings.Contains(t, "decimal"):
		return "numeric", kNumeric
	}
	// No declared type (BLOB affinity) or another name (NUMERIC
	// affinity): values print as they are stored.
	return "text", kText
}

// mysqlType maps a MySQL/MariaDB column (information_schema data_type and
// column_type) to the PostgreSQL type the source reports and the kind of
// its values. tinyint(1) is MySQL's BOOLEAN; DATETIME is a timestamp
// without time zone and TIMESTAMP one with (the session's time zone is
// UTC, so it prints in UTC).
func mysqlType(dataType, columnType string) (string, kind) {
	d := strings.ToLower(dataType)
	ct := strings.ToLower(columnType)
	unsigned := strings.Contains(ct, "unsigned")
	switch d {
	case "tinyint":
		if strings.HasPrefix(ct, "tinyint(1)") {
			return "boolean", kBool
		}
		return "smallint", kInt
	case "bool", "boolean":
		return "boolean", kBool
	case "smallint":
		if unsigned {
			return "integer", kInt
		}
		return "smallint", kInt
	case "mediumint", "year":
		return "integer", kInt
	case "int", "integer":
		if unsigned {
			return "bigint", kInt
		}
		return "integer", kInt
	case "bigint":
		if unsigned {
			return "numeric(20,0)", kNumeric
		}
		return "bigint", kInt
	case "decimal", "numeric":
		if i := strings.IndexByte(ct, '('); i >= 0 {
			if j := strings.IndexByte(ct[i:], ')'); j >= 0 {
				return "numeric" + ct[i:i+j+1], kNumeric
			}
		}
		return "numeric", kNumeric
	case "float":
		return "real", kFloat32
	case "double", "real":
		return "double precision", kFloat64
	case "date":
		return "date", kDate
	case "datetime":
		return "timestamp without time zone", kTimestamp
	case "timestamp":
		return "timestamp with time zone", kTimestampTZ
	case "time":
		return "time without time zone", kTime
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit":
		return "bytea", kBytea
	case "json":
		return "jsonb", kJSON
	}
	return "text", kText
}

// text returns the PostgreSQL text of one driver value of kind k (nil
// stays nil). A value that does not parse as its kind says is printed as
// it is: the targets then store what the source holds.
func text(k kind, v any) []byte {
	var raw []byte
	switch x := v.(type) {
	case nil:
		return nil
	case []byte:
		raw = x
	case string:
		raw = []byte(x)
	case int64:
		switch k {
		case kBool:
			return boolText(x != 0)
		case kTimestamp, kTimestampTZ, kDate:
			// SQLite: seconds since 1970.
			return timeText(k, time.Unix(x, 0).UTC())
		case kFloat64, kFloat32:
			return floatText(float64(x), k)
		}
		return strconv.AppendInt(nil, x, 10)
	case float64:
		switch k {
		case kInt, kNumeric:
			if x == math.Trunc(x) && math.Abs(x) < 1e18 {
				return strconv.AppendInt(nil, int64(x), 10)
			}
			return strconv.AppendFloat(nil, x, 'f', -1, 64)
		case kBool:
			return boolText(x != 0)
		}
		return floatText(x, k)
	case bool:
		return boolText(x)
	case time.Time:
		return timeText(k, x.UTC())
	default:
		raw = fmt.Append(nil, v)
	}
	switch k {
	case kBool:
		switch strings.ToLower(string(raw)) {
		case "0", "f", "false":
			return boolText(false)
		case "1", "t", "true":
			return boolText(true)
		}
	case kFloat64, kFloat32:
		bits := 64
		if k == kFloat32 {
			bits = 32
		}
		if f, err := strconv.ParseFloat(string(raw), bits); err == nil {
			return floatText(f, k)
		}
	case kBytea:
		out := make([]byte, 2+hex.EncodedLen(len(raw)))
		copy(out, `\x`)
		hex.Encode(out[2:], raw)
		return out
	case kTimestamp, kTimestampTZ, kDate:
		if t, ok := parseTime(string(raw)); ok {
			return timeText(k, t)
		}
	case kTime:
		return trimFraction(append([]byte{}, raw...))
	}
	return append([]byte{}, raw...)
}

func boolText(b bool) []byte {
	if b {
		return []byte("t")
	}
	return []byte("f")
}

// floatText prints a float as PostgreSQL prints a column of kind k.
func floatText(f float64, k kind) []byte {
	if k == kFloat32 {
		return source.FloatText(f, 32)
	}
	return source.FloatText(f, 64)
}

// timeLayouts are the forms of a stored date or time the source accepts:
// SQLite's (ISO 8601 with a space or a T, optional fraction and zone) and
// MySQL's.
var timeLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

// parseTime parses a stored date or time; a time without a zone is UTC.
func parseTime(s string) (time.Time, bool) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// timeText prints t as PostgreSQL prints a value of kind k.
func timeText(k kind, t time.Time) []byte {
	switch k {
	case kDate:
		return []byte(t.Format("2006-01-02"))
	case kTimestampTZ:
		return []byte(t.Format("2006-01-02 15:04:05.999999") + "+00")
	}
	return []byte(t.Format("2006-01-02 15:04:05.999999"))
}

// trimFraction drops trailing zeros of a fraction of seconds (and the
// point when none is left), as PostgreSQL prints times.
func trimFraction(b []byte) []byte {
	i := strings.LastIndexByte(string(b), '.')
	if i < 0 {
		return b
	}
	j := len(b)
	for j > i+1 && b[j-1] == '0' {
		j--
	}
	if j == i+1 {
		j = i
	}
	return b[:j]
}
