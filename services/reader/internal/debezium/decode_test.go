package debezium

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

var testCols = []Column{{"id", "bigint"}, {"name", "text"}, {"balance", "numeric(12,2)"}, {"at", "timestamp with time zone"}}

func vals(vs ...any) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		if v != nil {
			out[i] = []byte(v.(string))
		}
	}
	return out
}

// withSchema wraps a payload as the JSON converter does with
// schemas.enable=true; the record schema is the one below.
func withSchema(payload string) string {
	const rec = `{"type":"struct","optional":true,"fields":[
		{"field":"id","type":"int64"},
		{"field":"name","type":"string","optional":true},
		{"field":"balance","type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"12"}},
		{"field":"at","type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp"}]}`
	schema := `{"type":"struct","name":"dbserver1.public.customers.Envelope","fields":[` +
		strings.Replace(rec, `{"type":"struct"`, `{"field":"before","type":"struct"`, 1) + `,` +
		strings.Replace(rec, `{"type":"struct"`, `{"field":"after","type":"struct"`, 1) + `,
		{"field":"source","type":"struct","fields":[]},{"field":"op","type":"string"},{"field":"ts_ms","type":"int64","optional":true}]}`
	return `{"schema":` + schema + `,"payload":` + payload + `}`
}

func TestDecode(t *testing.T) {
	const src = `"source":{"connector":"postgresql","name":"dbserver1","lsn":123,"table":"customers"}`
	tests := []struct {
		name       string
		key, value string
		op         onewayv1.Op
		want       [][]byte
		tombstone  bool
	}{
		{"create, no schema", ``, `{"before":null,"after":{"id":1,"name":"Ann","balance":"12.5","at":"2024-01-31T12:34:56.5Z","extra":7},"op":"c",` + src + `,"ts_ms":1}`,
			onewayv1.Op_OP_INSERT, vals("1", "Ann", "12.50", "2024-01-31 12:34:56.5+00"), false},
		{"snapshot read", ``, `{"before":null,"after":{"id":2,"name":null,"balance":null,"at":null},"op":"r",` + src + `}`,
			onewayv1.Op_OP_UPSERT, vals("2", nil, nil, nil), false},
		{"update", ``, `{"before":{"id":1,"name":"Ann","balance":"1.00","at":null},"after":{"id":1,"name":"Anne","balance":"-0.5","at":null},"op":"u",` + src + `}`,
			onewayv1.Op_OP_UPDATE, vals("1", "Anne", "-0.50", nil), false},
		{"delete", ``, `{"before":{"id":3,"name":"x","balance":null,"at":null},"after":null,"op":"d",` + src + `}`,
			onewayv1.Op_OP_DELETE, vals("3", nil, nil, nil), false},
		{"delete, before holds only the key", ``, `{"before":{"id":4},"after":null,"op":"d",` + src + `}`,
			onewayv1.Op_OP_DELETE, vals("4", nil, nil, nil), false},
		{"delete without before: the record key", `{"id":5}`, `{"before":null,"after":null,"op":"d",` + src + `}`,
			onewayv1.Op_OP_DELETE, vals("5", nil, nil, nil), false},
		{"delete without before: a record key with schema", `{"schema":{"type":"struct","fields":[{"field":"id","type":"int64"}]},"payload":{"id":6}}`, `{"before":null,"after":null,"op":"d"}`,
			onewayv1.Op_OP_DELETE, vals("6", nil, nil, nil), false},
		{"create with schema: Decimal bytes, zoned timestamp", ``, withSchema(`{"before":null,"after":{"id":7,"name":"Bo","balance":"AOI=","at":"2024-01-31T12:34:56.123456+02:00"},"op":"c",` + src + `}`),
			onewayv1.Op_OP_INSERT, vals("7", "Bo", "2.26", "2024-01-31 10:34:56.123456+00"), false},
		{"negative Decimal bytes", ``, withSchema(`{"before":null,"after":{"id":8,"name":"C","balance":"/x4=","at":null},"op":"u"}`),
			onewayv1.Op_OP_UPDATE, vals("8", "C", "-2.26", nil), false},
		{"delete with schema", ``, withSchema(`{"before":{"id":9,"name":null,"balance":null,"at":null},"after":null,"op":"d"}`),
			onewayv1.Op_OP_DELETE, vals("9", nil, nil, nil), false},
		{"tombstone", `{"id":3}`, ``, 0, nil, true},
		{"tombstone as null", `{"id":3}`, `null`, 0, nil, true},
	}
	d := NewDecoder(testCols, []int{0})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, ok, err := d.Decode([]byte(tt.key), []byte(tt.value))
			require.NoError(t, err)
			require.Equal(t, !tt.tombstone, ok)
			if tt.tombstone {
				return
			}
			require.Equal(t, tt.op, ev.Op)
			require.Equal(t, tt.want, ev.Values)
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	tests := []struct{ name, key, value, msg string }{
		{"not JSON", ``, `{"op":`, "not a JSON object"},
		{"a list", ``, `[1]`, "not a JSON object"},
		{"no op", ``, `{"id":1,"name":"x"}`, `no "op"`},
		{"unknown op", ``, `{"op":"x","after":{}}`, `unknown op "x"`},
		{"truncate", ``, `{"op":"t","source":{}}`, "truncate"},
		{"create without after", ``, `{"op":"c","after":null}`, `"after" is null`},
		{"missing column", ``, `{"op":"c","after":{"id":1,"name":"a","balance":"1"}}`, `column "at" is not in "after"`},
		{"null key", ``, `{"op":"c","after":{"id":null,"name":"a","balance":"1","at":null}}`, `key column "id" is null`},
		{"text key value", ``, `{"op":"c","after":{"id":"abc","name":"a","balance":"1","at":null}}`, `column "id" (bigint)`},
		{"number for text", ``, `{"op":"c","after":{"id":1,"name":5,"balance":"1","at":null}}`, `is not a string`},
		{"bad decimal", ``, `{"op":"c","after":{"id":1,"name":"a","balance":"AOI=","at":null}}`, "needs the schema"},
		{"decimal overflow", ``, `{"op":"c","after":{"id":1,"name":"a","balance":"12345678901.5","at":null}}`, "does not fit numeric(12,2)"},
		{"bad timestamp", ``, `{"op":"c","after":{"id":1,"name":"a","balance":"1","at":"yesterday"}}`, "not an ISO-8601 timestamp"},
		{"delete without before or key", ``, `{"op":"d","before":null}`, "deleted key is unknown"},
		{"payload null", ``, `{"schema":{},"payload":null}`, "payload is null"},
		{"scale out of range", ``, `{"op":"c","after":{"id":1,"name":"a","balance":{"scale":-1000000000,"value":"AQ=="},"at":null}}`, "beyond what PostgreSQL's numeric holds"},
	}
	d := NewDecoder(testCols, []int{0})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := d.Decode([]byte(tt.key), []byte(tt.value))
			require.ErrorContains(t, err, tt.msg)
		})
	}
}

// Every conversion gives what PostgreSQL itself prints for the same value
// (text format, session time zone UTC, as the PostgreSQL source reads):
// the literal pg is cast to the type on a real server.
func TestConvertMatchesPostgres(t *testing.T) {
	tests := []struct {
		typ    string
		raw    string
		schema string // the field's logical name; "" = no schema
		params map[string]string
		pg     string // the same value as a PostgreSQL literal
	}{
		{"smallint", `-32768`, "", nil, "-32768"},
		{"integer", `42`, "", nil, "42"},
		{"bigint", `9223372036854775807`, "", nil, "9223372036854775807"},
		{"bigint", `"-17"`, "", nil, "-17"},
		{"boolean", `true`, "", nil, "true"},
		{"boolean", `false`, "", nil, "false"},
		{"double precision", `0.1`, "", nil, "0.1"},
		{"double precision", `1e15`, "", nil, "1e15"},
		{"double precision", `123456789012345`, "", nil, "123456789012345"},
		{"double precision", `0.0001`, "", nil, "0.0001"},
		{"double precision", `0.00001234`, "", nil, "0.00001234"},
		{"double precision", `-2.5e-300`, "", nil, "-2.5e-300"},
		{"double precision", `"NaN"`, "", nil, "NaN"},
		{"double precision", `"-Infinity"`, "", nil, "-Infinity"},
		{"double precision", `100`, "", nil, "100"},
		{"real", `1234567`, "", nil, "1234567"},
		{"real", `123456`, "", nil, "123456"},
		{"real", `3.14159274`, "", nil, "3.14159274"},
		{"numeric", `1.50`, "", nil, "1.50"},
		{"numeric", `"1.5e3"`, "", nil, "1.5e3"},
		{"numeric", `"1.50e1"`, "", nil, "1.50e1"},
		{"numeric", `"-0.00"`, "", nil, "-0.00"},
		{"numeric", `"1e-3"`, "", nil, "1e-3"},
		{"numeric", `"NaN"`, "", nil, "NaN"},
		{"numeric", `".5"`, "", nil, ".5"},
		{"numeric", `{"scale":3,"value":"BNI="}`, nameVariableDecimal, nil, "1.234"},
		{"numeric(12,2)", `1.005`, "", nil, "1.005"},
		{"numeric(12,2)", `-1.005`, "", nil, "-1.005"},
		{"numeric(12,2)", `"7"`, "", nil, "7"},
		{"numeric(12,2)", `"AOI="`, nameDecimal, map[string]string{"scale": "2"}, "2.26"},
		{"numeric(10)", `"12.5"`, "", nil, "12.5"},
		{"numeric(5,0)", `"-12.5"`, "", nil, "-12.5"},
		{"text", `"héllo \"world\"\n"`, "", nil, "héllo \"world\"\n"},
		{"character varying(5)", `"abc  "`, "", nil, "abc  "},
		{"character varying(3)", `"abc   "`, "", nil, "abc   "},
		{"character(4)", `"ab"`, "", nil, "ab"},
		{"character(2)", `"ab  "`, "", nil, "ab  "},
		{"date", `19753`, nameDate, nil, "2024-01-31"},
		{"date", `-1`, "", nil, "1969-12-31"},
		{"date", `"2024-02-29"`, "", nil, "2024-02-29"},
		{"date", `-719529`, "", nil, "0002-12-31 BC"},
		{"timestamp without time zone", `1706704496123456`, nameMicroTimestamp, nil, "2024-01-31 12:34:56.123456"},
		{"timestamp without time zone", `1706704496123456`, "", nil, "2024-01-31 12:34:56.123456"},
		{"timestamp without time zone", `1706704496120`, nameTimestamp, nil, "2024-01-31 12:34:56.12"},
		{"timestamp(3) without time zone", `1706704496123`, "", nil, "2024-01-31 12:34:56.123"},
		{"timestamp(3) without time zone", `1706704496123456789`, nameNanoTimestamp, nil, "2024-01-31 12:34:56.123456789"},
		{"timestamp(0) without time zone", `1706704496500000`, nameMicroTimestamp, nil, "2024-01-31 12:34:56.5"},
		{"timestamp without time zone", `-1000000`, nameMicroTimestamp, nil, "1969-12-31 23:59:59"},
		{"timestamp without time zone", `"2024-01-31T12:34:56"`, "", nil, "2024-01-31 12:34:56"},
		{"timestamp with time zone", `"2024-01-31T12:34:56.100Z"`, "", nil, "2024-01-31 12:34:56.1+00"},
		{"timestamp with time zone", `"2024-01-31T23:34:56-05:00"`, "", nil, "2024-01-31 23:34:56-05"},
		{"timestamp with time zone", `1706704496000000`, nameMicroTimestamp, nil, "2024-01-31 12:34:56+00"},
		{"timestamp(2) with time zone", `"2024-01-31T12:34:56.125Z"`, "", nil, "2024-01-31 12:34:56.125+00"},
		{"time without time zone", `45296789000`, nameMicroTime, nil, "12:34:56.789"},
		{"time without time zone", `45296789`, nameTime, nil, "12:34:56.789"},
		{"time(3) without time zone", `45296789`, "", nil, "12:34:56.789"},
		{"time without time zone", `0`, "", nil, "00:00:00"},
		{"time without time zone", `86400000000`, nameMicroTime, nil, "24:00:00"},
		{"time without time zone", `"08:00:00.5"`, "", nil, "08:00:00.5"},
		{"json", `"{\"b\": 1,  \"a\":[1, 2.50]}"`, "io.debezium.data.Json", nil, `{"b": 1,  "a":[1, 2.50]}`},
		{"jsonb", `"{\"bb\": 1,  \"a\":[1, 2.50, 1e2, true, null], \"a\": \"x\\u00e9\\n\\u0001\", \"c\": {}}"`, "io.debezium.data.Json", nil, `{"bb": 1,  "a":[1, 2.50, 1e2, true, null], "a": "x\u00e9\n\u0001", "c": {}}`},
		{"jsonb", `"[]"`, "", nil, `[]`},
		{"uuid", `"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"`, "io.debezium.data.Uuid", nil, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"bytea", `"3q2+7w=="`, "", nil, `\xdeadbeef`},
		{"bytea", `""`, "", nil, `\x`},
	}
	ctx := context.Background()
	pool, err := pgconn.Open(ctx, pgtest.ServerURL(t), "oneway-debezium-test", 2)
	require.NoError(t, err)
	defer pool.Close()
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.raw, func(t *testing.T) {
			var fs *fieldSchema
			if tt.schema != "" {
				fs = &fieldSchema{Name: tt.schema, Parameters: tt.params}
			}
			got, err := convert(tt.typ, json.RawMessage(tt.raw), fs)
			require.NoError(t, err)
			rows, err := pool.Query(ctx, "SELECT $1::text::"+tt.typ, pgx.QueryResultFormats{pgx.TextFormatCode}, tt.pg)
			require.NoError(t, err)
			require.True(t, rows.Next(), "no row")
			want := string(rows.RawValues()[0])
			rows.Close()
			require.NoError(t, rows.Err())
			require.Equal(t, want, string(got))
		})
	}
}

func TestConvertNull(t *testing.T) {
	for _, typ := range []string{"bigint", "text", "numeric(12,2)", "timestamp with time zone", "jsonb", "boolean"} {
		got, err := convert(typ, json.RawMessage(`null`), nil)
		require.NoError(t, err)
		require.Nil(t, got, typ)
	}
}
