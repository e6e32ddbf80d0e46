package verify

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// class is how verify reads a column's values, decided by the source
// column's type as the PostgreSQL catalog spells it (format_type).
type class uint8

const (
	classText    class = iota // compared as text; keys ordered by their bytes
	classInt                  // smallint, integer, bigint
	classNumeric              // numeric, decimal
	classFloat                // real, double precision
	classBool                 // boolean
	classJSON                 // json, jsonb
)

// classOf maps a PostgreSQL type name to its class. Arrays and every type
// not listed are text.
func classOf(typ string) class {
	t := strings.ToLower(strings.TrimSpace(typ))
	if strings.HasSuffix(t, "]") {
		return classText
	}
	if i := strings.IndexByte(t, '('); i >= 0 {
		t = strings.TrimSpace(t[:i])
	}
	switch t {
	case "smallint", "integer", "bigint", "int", "int2", "int4", "int8":
		return classInt
	case "numeric", "decimal":
		return classNumeric
	case "real", "double precision", "float4", "float8":
		return classFloat
	case "boolean", "bool":
		return classBool
	case "json", "jsonb":
		return classJSON
	}
	return classText
}

// numericOrder reports whether keys of the class are ordered by value (else
// by the bytes of their text).
func (c class) numericOrder() bool {
	return c == classInt || c == classNumeric || c == classFloat
}

// canon returns the canonical text of one value of class c, so that the
// forms the target kinds hold compare equal when the values are equal:
//
//   - integers as decimal digits (a REAL 5.0 from SQLite is "5");
//   - numeric as its shortest exact decimal: no leading or trailing zeros,
//     no exponent ("10.50", "10.5" and "1.05e1" are "10.5"; the text of a
//     numeric(12,2) column equals that of a numeric one), NaN and
//     ±Infinity spelled as PostgreSQL does;
//   - floating point as Go's shortest round-trip form of the double
//     (PostgreSQL prints "1e+06" as "1000000", SQLite returns a REAL);
//     -0 is 0;
//   - booleans as PostgreSQL prints them, "t" and "f" (JSON true/false,
//     SQLite 1/0);
//   - json and jsonb compacted (JSON documents carry them without the
//     spaces PostgreSQL prints); the JSON value null is NULL, as a JSON
//     document cannot tell them apart;
//   - everything else (text, timestamps, dates, uuid, bytea in hex, arrays,
//     intervals) as the source printed it: every target kind stores those
//     texts unchanged.
//
// A value that does not parse as its class says is kept as it is. nil
// (NULL) stays nil.
func canon(c class, v []byte) []byte {
	if v == nil {
		return nil
	}
	switch c {
	case classInt:
		if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return strconv.AppendInt(nil, n, 10)
		}
		if d, ok := parseDecimal(v); ok {
			return []byte(d.String())
		}
	case classNumeric:
		if d, ok := parseDecimal(v); ok {
			return []byte(d.String())
		}
	case classFloat:
		if f, err := strconv.ParseFloat(string(v), 64); err == nil {
			if f == 0 {
				f = 0 // -0
			}
			return strconv.AppendFloat(nil, f, 'g', -1, 64)
		}
	case classBool:
		switch strings.ToLower(string(v)) {
		case "t", "true", "1", "y", "yes", "on":
			return []byte("t")
		case "f", "false", "0", "n", "no", "off":
			return []byte("f")
		}
	case classJSON:
		var b bytes.Buffer
		if json.Compact(&b, v) == nil {
			if b.String() == "null" {
				return nil // JSON documents cannot tell it from NULL
			}
			return b.Bytes()
		}
	}
	return v
}

// canonKey is canon for a key part. Keys of text classes are kept as they
// are (their bytes are their order), except booleans.
func canonKey(c class, v []byte) []byte {
	if c == classBool {
		return canon(c, v)
	}
	return v
}

// decimal is a parsed number: value = sign × 0.digits × 10^exp, digits
// without leading or trailing zeros.
type decimal struct {
	kind   numKind
	digits []byte // ASCII digits, for finite non-zero values
	exp    int
}

type numKind uint8

// The kinds in ascending order of value (PostgreSQL sorts NaN above every
// number).
const (
	numNegInf numKind = iota + 1
	numNeg
	numZero
	numPos
	numPosInf
	numNaN
)

// parseDecimal parses an integer, decimal or floating-point text
// ("-12.50", "1.5e-07", "1e+20", ".5"), or NaN / Infinity as PostgreSQL and
// Go spell them.
func parseDecimal(v []byte) (decimal, bool) {
	s := string(v)
	switch strings.ToLower(s) {
	case "nan":
		return decimal{kind: numNaN}, true
	case "infinity", "inf", "+infinity", "+inf":
		return decimal{kind: numPosInf}, true
	case "-infinity", "-inf":
		return decimal{kind: numNegInf}, true
	}
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e > 1<<24 || e < -(1<<24) {
			return decimal{}, false
		}
		mant, exp = s[:i], e
	}
	intPart, frac := mant, ""
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		intPart, frac = mant[:i], mant[i+1:]
	}
	if intPart == "" && frac == "" {
		return decimal{}, false
	}
	for _, p := range []string{intPart, frac} {
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return decimal{}, false
			}
		}
	}
	all := intPart + frac
	exp += len(intPart)
	lead := 0
	for lead < len(all) && all[lead] == '0' {
		lead++
	}
	all = all[lead:]
	exp -= lead
	all = strings.TrimRight(all, "0")
	if all == "" {
		return decimal{kind: numZero}, true
	}
	d := decimal{kind: numPos, digits: []byte(all), exp: exp}
	if neg {
		d.kind = numNeg
	}
	return d, true
}

// String prints the value as PostgreSQL prints a numeric: plain digits, no
// exponent, no trailing fractional zeros.
func (d decimal) String() string {
	switch d.kind {
	case numNaN:
		return "NaN"
	case numPosInf:
		return "Infinity"
	case numNegInf:
		return "-Infinity"
	case numZero:
		return "0"
	}
	var b strings.Builder
	if d.kind == numNeg {
		b.WriteByte('-')
	}
	n := len(d.digits)
	switch {
	case d.exp <= 0:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -d.exp))
		b.Write(d.digits)
	case d.exp >= n:
		b.Write(d.digits)
		b.WriteString(strings.Repeat("0", d.exp-n))
	default:
		b.Write(d.digits[:d.exp])
		b.WriteByte('.')
		b.Write(d.digits[d.exp:])
	}
	return b.String()
}

// appendNumberKey appends the order-preserving encoding of a number:
// bytes.Compare on two encodings orders them as the numbers, with NaN
// above +Infinity, as PostgreSQL orders numeric and float keys. The
// encoding is prefix-free, so the parts of a composite key concatenate.
//
//	kind byte; then for finite non-zero values the exponent (4 bytes, big
//	endian, biased) and the digits (each + 1) ended by 0x00; negatives
//	store the exponent and digits complemented and end with 0xFF.
func appendNumberKey(dst []byte, d decimal) []byte {
	dst = append(dst, byte(d.kind))
	if d.kind != numPos && d.kind != numNeg {
		return dst
	}
	e := uint32(int32(d.exp)) ^ 1<<31 // bias: ascending as unsigned
	if d.kind == numNeg {
		e = ^e
	}
	dst = binary.BigEndian.AppendUint32(dst, e)
	for _, c := range d.digits {
		b := c - '0' + 1
		if d.kind == numNeg {
			b = 0xff - b
		}
		dst = append(dst, b)
	}
	if d.kind == numNeg {
		return append(dst, 0xff)
	}
	return append(dst, 0x00)
}

// appendTextKey appends the order-preserving, prefix-free encoding of a
// text: its bytes with 0x00 escaped as 0x00 0xFF, ended by 0x00 0x01.
// bytes.Compare on two encodings orders them as the texts' bytes, which
// is PostgreSQL's COLLATE "C" order for UTF-8 text.
func appendTextKey(dst, v []byte) []byte {
	for _, c := range v {
		dst = append(dst, c)
		if c == 0 {
			dst = append(dst, 0xff)
		}
	}
	return append(dst, 0x00, 0x01)
}

// appendKeyPart appends one key part of class c in canonical key order.
func appendKeyPart(dst []byte, c class, v []byte) ([]byte, error) {
	if !c.numericOrder() {
		return appendTextKey(dst, canonKey(c, v)), nil
	}
	d, ok := parseDecimal(v)
	if !ok {
		return nil, fmt.Errorf("key value %q is not a number", v)
	}
	return appendNumberKey(dst, d), nil
}
