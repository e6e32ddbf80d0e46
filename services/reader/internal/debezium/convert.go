package debezium

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Debezium's and Kafka Connect's logical type names.
const (
	nameDecimal         = "org.apache.kafka.connect.data.Decimal"
	nameVariableDecimal = "io.debezium.data.VariableScaleDecimal"
	nameDate            = "io.debezium.time.Date"
	nameConnectDate     = "org.apache.kafka.connect.data.Date"
	nameTimestamp       = "io.debezium.time.Timestamp"
	nameMicroTimestamp  = "io.debezium.time.MicroTimestamp"
	nameNanoTimestamp   = "io.debezium.time.NanoTimestamp"
	nameConnectTS       = "org.apache.kafka.connect.data.Timestamp"
	nameTime            = "io.debezium.time.Time"
	nameMicroTime       = "io.debezium.time.MicroTime"
	nameNanoTime        = "io.debezium.time.NanoTime"
	nameConnectTime     = "org.apache.kafka.connect.data.Time"
)

// pgType is a canonical PostgreSQL type split into its base name and
// modifiers: "numeric(12,2)" → numeric [12 2]; "timestamp(3) with time
// zone" → "timestamp with time zone" [3].
type pgType struct {
	base string
	mods []int
}

func parseType(t string) pgType {
	open := strings.IndexByte(t, '(')
	if open < 0 {
		return pgType{base: t}
	}
	end := strings.IndexByte(t, ')')
	var mods []int
	for _, s := range strings.Split(t[open+1:end], ",") {
		n, _ := strconv.Atoi(strings.TrimSpace(s))
		mods = append(mods, n)
	}
	return pgType{base: strings.TrimSpace(t[:open] + t[end+1:]), mods: mods}
}

// mod returns modifier i, or def when absent.
func (t pgType) mod(i, def int) int {
	if i < len(t.mods) {
		return t.mods[i]
	}
	return def
}

// convert turns one JSON value of a Debezium record into PostgreSQL's text
// output for the column type typ (what a PostgreSQL source reads with
// the session time zone UTC); nil is NULL. fs, the field's schema, is nil
// without the schema wrapper: numbers of time types are then read by
// Debezium's default (adaptive) rule, milliseconds up to precision 3 and
// microseconds above.
func convert(typ string, raw json.RawMessage, fs *fieldSchema) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || isNull(raw) {
		return nil, nil
	}
	t := parseType(typ)
	var name string
	var params map[string]string
	if fs != nil {
		name, params = fs.Name, fs.Parameters
	}
	switch t.base {
	case "smallint", "integer", "bigint":
		bits := map[string]int{"smallint": 16, "integer": 32, "bigint": 64}[t.base]
		s, err := scalarText(raw)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(s, 10, bits)
		if err != nil {
			return nil, fmt.Errorf("%s is not a %d-bit integer", clip(s), bits)
		}
		return strconv.AppendInt(nil, n, 10), nil
	case "boolean":
		switch string(raw) {
		case "true":
			return []byte("t"), nil
		case "false":
			return []byte("f"), nil
		}
		return nil, fmt.Errorf("%s is not true or false", clip(string(raw)))
	case "real", "double precision":
		s, err := scalarText(raw)
		if err != nil {
			return nil, err
		}
		return floatText(s, t.base == "real")
	case "numeric":
		s, err := decimalText(raw, name, params)
		if err != nil {
			return nil, err
		}
		scale := -1
		if len(t.mods) == 2 {
			scale = t.mods[1]
		} else if len(t.mods) == 1 {
			scale = 0
		}
		return numericText(s, t.mod(0, 0), scale)
	case "text", "character varying", "character":
		s, err := stringValue(raw)
		if err != nil {
			return nil, err
		}
		if t.base == "text" {
			return []byte(s), nil
		}
		limit := t.mod(0, 1)
		if t.base == "character varying" && len(t.mods) == 0 {
			return []byte(s), nil
		}
		if r := []rune(s); len(r) > limit {
			// PostgreSQL stores an over-long value only when the excess is
			// spaces, cut to the length.
			if strings.TrimRight(string(r[limit:]), " ") != "" {
				return nil, fmt.Errorf("a value of %d characters is too long for %s", len(r), typ)
			}
			s = string(r[:limit])
		}
		if n := utf8.RuneCountInString(s); t.base == "character" && n < limit {
			s += strings.Repeat(" ", limit-n)
		}
		return []byte(s), nil
	case "date":
		if raw[0] == '"' {
			s, _ := stringValue(raw)
			d, err := time.Parse("2006-01-02", s)
			if err != nil {
				return nil, fmt.Errorf("%s is not a date (YYYY-MM-DD)", clip(s))
			}
			return []byte(dateText(d)), nil
		}
		days, err := strconv.ParseInt(string(raw), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s is not a number of days since 1970-01-01", clip(string(raw)))
		}
		return []byte(dateText(time.Unix(days*86400, 0).UTC())), nil
	case "timestamp without time zone", "timestamp with time zone":
		p := t.mod(0, 6)
		ts, err := instant(raw, name, p, t.base == "timestamp with time zone")
		if err != nil {
			return nil, err
		}
		ts = roundTo(ts, p)
		s := dateText(ts)
		if i := strings.Index(s, " BC"); i >= 0 {
			s = s[:i] + " " + clockText(ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond()) + " BC"
		} else {
			s += " " + clockText(ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond())
		}
		if t.base == "timestamp with time zone" {
			if strings.HasSuffix(s, " BC") {
				s = strings.TrimSuffix(s, " BC") + "+00 BC"
			} else {
				s += "+00"
			}
		}
		return []byte(s), nil
	case "time without time zone":
		p := t.mod(0, 6)
		micros, err := timeOfDay(raw, name, p)
		if err != nil {
			return nil, err
		}
		scale := int64(math.Pow10(6 - p))
		micros = (micros + scale/2) / scale * scale
		if micros < 0 || micros > 86400e6 {
			return nil, fmt.Errorf("%s is not a time of day", clip(string(raw)))
		}
		sec := micros / 1e6
		return []byte(clockText(int(sec/3600), int(sec/60%60), int(sec%60), int(micros%1e6)*1000)), nil
	case "json", "jsonb":
		doc := []byte(raw)
		if raw[0] == '"' {
			s, _ := stringValue(raw)
			doc = []byte(s)
		}
		if !json.Valid(doc) {
			return nil, fmt.Errorf("%s is not JSON", clip(string(doc)))
		}
		if t.base == "json" {
			return doc, nil
		}
		return jsonbText(doc)
	case "uuid":
		s, err := stringValue(raw)
		if err != nil {
			return nil, err
		}
		h := strings.ToLower(strings.NewReplacer("-", "", "{", "", "}", "").Replace(s))
		if len(h) != 32 {
			return nil, fmt.Errorf("%s is not a UUID", clip(s))
		}
		if _, err := hex.DecodeString(h); err != nil {
			return nil, fmt.Errorf("%s is not a UUID", clip(s))
		}
		return []byte(h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]), nil
	case "bytea":
		s, err := stringValue(raw)
		if err != nil {
			return nil, err
		}
		b, err := decodeBase64(s)
		if err != nil {
			return nil, fmt.Errorf("%s is not base64 (binary.handling.mode bytes or base64)", clip(s))
		}
		return []byte(`\x` + hex.EncodeToString(b)), nil
	}
	return nil, fmt.Errorf("type %s is not supported", typ)
}

// scalarText is the text of a JSON number, or of a JSON string holding one.
func scalarText(raw json.RawMessage) (string, error) {
	if raw[0] == '"' {
		return stringValue(raw)
	}
	if raw[0] == '{' || raw[0] == '[' || raw[0] == 't' || raw[0] == 'f' {
		return "", fmt.Errorf("%s is not a number", clip(string(raw)))
	}
	return string(raw), nil
}

// stringValue unquotes a JSON string.
func stringValue(raw json.RawMessage) (string, error) {
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", fmt.Errorf("%s is not a string", clip(string(raw)))
	}
	if strings.ContainsRune(s, 0) {
		return "", errors.New("a string holds a NUL character, which PostgreSQL text cannot store")
	}
	return s, nil
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// floatText is PostgreSQL's output of a float8 (or float4, for real): the
// shortest text that reads back as the same value, in exponent form below
// 1e-4 and from 1e15 (1e6 for real) up.
func floatText(s string, real bool) ([]byte, error) {
	switch s {
	case "NaN", "Infinity", "-Infinity":
		return []byte(s), nil
	}
	bits, limit := 64, 15
	if real {
		bits, limit = 32, 6
	}
	f, err := strconv.ParseFloat(s, bits)
	if err != nil {
		return nil, fmt.Errorf("%s is not a number", clip(s))
	}
	e := strconv.FormatFloat(f, 'e', -1, bits)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= limit {
		return []byte(e), nil
	}
	return []byte(strconv.FormatFloat(f, 'f', -1, bits)), nil
}

// decimalText is the decimal text of a numeric value in any of Debezium's
// forms: decimal.handling.mode precise (a base64 unscaled integer, its
// scale in the schema; or a VariableScaleDecimal {scale, value}), string,
// or double (a JSON number).
func decimalText(raw json.RawMessage, name string, params map[string]string) (string, error) {
	if raw[0] == '{' || name == nameVariableDecimal {
		var v struct {
			Scale *int   `json:"scale"`
			Value string `json:"value"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Scale == nil {
			return "", fmt.Errorf("%s is not a VariableScaleDecimal {scale, value}", clip(string(raw)))
		}
		return unscaledText(v.Value, *v.Scale)
	}
	if raw[0] != '"' {
		return scalarText(raw)
	}
	s, err := stringValue(raw)
	if err != nil {
		return "", err
	}
	if name == nameDecimal {
		scale, err := strconv.Atoi(params["scale"])
		if err != nil {
			return "", fmt.Errorf("a Decimal whose schema has no scale parameter (%q)", params["scale"])
		}
		return unscaledText(s, scale)
	}
	if !decimalRe.MatchString(s) && s != "NaN" {
		return "", fmt.Errorf("%s is not a decimal number; a base64 Decimal (decimal.handling.mode=precise) needs the schema for its scale: set the converter's schemas.enable=true, or decimal.handling.mode=string", clip(s))
	}
	return s, nil
}

// unscaledText is the decimal text of a big-endian two's complement
// unscaled integer (base64) with scale decimals.
func unscaledText(b64 string, scale int) (string, error) {
	if scale > maxNumericScale || scale < -maxNumericWhole {
		// A hostile or broken event must not make the reader print a
		// number of a billion digits.
		return "", fmt.Errorf("a decimal scale of %d is beyond what PostgreSQL's numeric holds (%d to %d)", scale, -maxNumericWhole, maxNumericScale)
	}
	b, err := decodeBase64(b64)
	if err != nil || len(b) == 0 {
		return "", fmt.Errorf("%s is not a base64 unscaled decimal", clip(b64))
	}
	n := new(big.Int).SetBytes(b)
	if b[0]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	return scaledText(n, scale), nil
}

// PostgreSQL's numeric holds up to 131072 digits before the decimal point
// and up to 16383 after it.
const (
	maxNumericWhole = 131072
	maxNumericScale = 16383
)

// scaledText prints n / 10^scale with exactly scale decimals (a negative
// scale multiplies).
func scaledText(n *big.Int, scale int) string {
	if scale < 0 {
		n = new(big.Int).Mul(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-scale)), nil))
		scale = 0
	}
	digits := new(big.Int).Abs(n).String()
	if len(digits) <= scale {
		digits = strings.Repeat("0", scale-len(digits)+1) + digits
	}
	s := digits
	if scale > 0 {
		s = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
	}
	if n.Sign() < 0 {
		s = "-" + s
	}
	return s
}

var decimalRe = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// numericText is PostgreSQL's output of a decimal as numeric(precision,
// scale): rounded half away from zero to scale decimals, or with its own
// scale when scale < 0 (numeric without a type modifier).
func numericText(s string, precision, scale int) ([]byte, error) {
	if s == "NaN" {
		return []byte(s), nil
	}
	m := decimalRe.FindStringSubmatch(s)
	if m == nil {
		return nil, fmt.Errorf("%s is not a decimal number", clip(s))
	}
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant = s[:i]
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e > 100000 || e < -100000 {
			return nil, fmt.Errorf("%s has an exponent out of range", clip(s))
		}
		exp = e
	}
	neg := strings.HasPrefix(mant, "-")
	mant = strings.TrimLeft(mant, "+-")
	intPart, frac, _ := strings.Cut(mant, ".")
	n, ok := new(big.Int).SetString(intPart+frac+"0", 10) // the "0" allows "" and is divided out below
	if !ok {
		return nil, fmt.Errorf("%s is not a decimal number", clip(s))
	}
	n.Quo(n, big.NewInt(10))
	if neg {
		n.Neg(n)
	}
	own := len(frac) - exp // the value is n / 10^own
	if scale < 0 {
		return []byte(scaledText(n, own)), nil
	}
	if own > scale {
		div := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(own-scale)), nil)
		q, r := new(big.Int).QuoRem(n, div, new(big.Int))
		if r.Mul(r.Abs(r), big.NewInt(2)).Cmp(div) >= 0 {
			if n.Sign() < 0 {
				q.Sub(q, big.NewInt(1))
			} else {
				q.Add(q, big.NewInt(1))
			}
		}
		n, own = q, scale
	}
	out := scaledText(n, own)
	if own < scale {
		out = scaledText(new(big.Int).Mul(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale-own)), nil)), scale)
	}
	if precision > 0 {
		intDigits := len(strings.TrimLeft(strings.SplitN(strings.TrimLeft(out, "-"), ".", 2)[0], "0"))
		if intDigits > precision-scale {
			return nil, fmt.Errorf("%s does not fit numeric(%d,%d)", clip(s), precision, scale)
		}
	}
	return []byte(out), nil
}

// dateText is PostgreSQL's ISO output of the date of t.
func dateText(t time.Time) string {
	y, m, d := t.Date()
	if y <= 0 {
		return fmt.Sprintf("%04d-%02d-%02d BC", 1-y, m, d)
	}
	return fmt.Sprintf("%04d-%02d-%02d", y, m, d)
}

// clockText is hh:mm:ss with the fraction of a second, trailing zeros
// dropped, as PostgreSQL prints it.
func clockText(h, m, s, nanos int) string {
	out := fmt.Sprintf("%02d:%02d:%02d", h, m, s)
	if micros := nanos / 1000; micros != 0 {
		out += strings.TrimRight(fmt.Sprintf(".%06d", micros), "0")
	}
	return out
}

// roundTo rounds t to p fractional digits of a second, half away from
// zero, as PostgreSQL does for timestamp(p).
func roundTo(t time.Time, p int) time.Time {
	return t.Round(time.Duration(math.Pow10(9 - p)))
}

// timeUnit is the unit of a number of a time type: from the schema's
// logical name, else Debezium's adaptive default for the column's
// precision.
func timeUnit(name string, precision int) time.Duration {
	switch name {
	case nameTimestamp, nameConnectTS, nameTime, nameConnectTime:
		return time.Millisecond
	case nameMicroTimestamp, nameMicroTime:
		return time.Microsecond
	case nameNanoTimestamp, nameNanoTime:
		return time.Nanosecond
	}
	if precision <= 3 {
		return time.Millisecond
	}
	return time.Microsecond
}

// isoLayouts are the timestamp forms accepted as strings (Debezium's
// ZonedTimestamp and IsoTimestamp, and the same with a space).
var isoLayouts = []string{
	"2006-01-02T15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999Z07",
	"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999",
}

// instant reads a timestamp: a number since the epoch, or an ISO string.
// An ISO string with an offset is taken in UTC (timestamptz); one without
// is the wall-clock value (for timestamptz, UTC).
func instant(raw json.RawMessage, name string, precision int, zoned bool) (time.Time, error) {
	if raw[0] == '"' {
		s, _ := stringValue(raw)
		for _, l := range isoLayouts {
			if t, err := time.Parse(l, s); err == nil {
				if zoned {
					return t.UTC(), nil
				}
				return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC), nil
			}
		}
		return time.Time{}, fmt.Errorf("%s is not an ISO-8601 timestamp", clip(s))
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s is not a number since the epoch", clip(string(raw)))
	}
	unit := timeUnit(name, precision)
	per := int64(time.Second / unit)
	sec, rem := n/per, n%per
	if rem < 0 {
		sec, rem = sec-1, rem+per
	}
	return time.Unix(sec, rem*int64(unit)).UTC(), nil
}

// timeOfDay reads a time of day in microseconds: a number since midnight,
// or a string hh:mm:ss[.ffffff].
func timeOfDay(raw json.RawMessage, name string, precision int) (int64, error) {
	if raw[0] == '"' {
		s, _ := stringValue(raw)
		if s == "24:00:00" {
			return 86400e6, nil
		}
		t, err := time.Parse("15:04:05.999999999", s)
		if err != nil {
			return 0, fmt.Errorf("%s is not a time of day (hh:mm:ss)", clip(s))
		}
		return int64(t.Hour()*3600+t.Minute()*60+t.Second())*1e6 + int64(t.Nanosecond()/1000), nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not a number since midnight", clip(string(raw)))
	}
	switch timeUnit(name, precision) {
	case time.Millisecond:
		return n * 1000, nil
	case time.Nanosecond:
		return (n + 500) / 1000, nil
	}
	return n, nil
}

// jsonbText is PostgreSQL's output of a jsonb value: keys of each object
// unique (the last wins) and ordered by length, then bytes; ", " and ": "
// between items; numbers as numeric prints them; strings escaped as
// PostgreSQL escapes them.
func jsonbText(doc []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	var b bytes.Buffer
	if err := writeJSONB(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func writeJSONB(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case json.Number:
		n, err := numericText(string(x), 0, -1)
		if err != nil {
			return err
		}
		b.Write(n)
	case string:
		if strings.ContainsRune(x, 0) {
			return errors.New("a JSON string holds \\u0000, which jsonb cannot store")
		}
		writeJSONString(b, x)
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			if err := writeJSONB(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if len(keys[i]) != len(keys[j]) {
				return len(keys[i]) < len(keys[j])
			}
			return keys[i] < keys[j]
		})
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeJSONString(b, k)
			b.WriteString(": ")
			if err := writeJSONB(b, x[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	}
	return nil
}

// writeJSONString writes s quoted as PostgreSQL's escape_json does.
func writeJSONString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// clip shortens a value quoted in an error message.
func clip(s string) string {
	if len(s) > 60 {
		return strconv.Quote(s[:57] + "...")
	}
	return strconv.Quote(s)
}
