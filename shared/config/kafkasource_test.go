package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// kafkaBase is a minimal valid kafka source. Lines matter: see below.
const kafkaBase = `pipeline: cust
source:
  kind: kafka
  table: customers
  key: [id]
  columns: [id, name, at]
  types:
    id: int8
    name: varchar(40)
    at: timestamptz(3)
  kafka:
    brokers: [127.0.0.1:9092]
    topic: dbserver1.public.customers
targets:
  - name: pg
    kind: postgres
    url: postgres://u:p@h/db
`

//  3 kind  4 table  5 key  6 columns  7 types:  8 id  9 name  10 at
// 11 kafka:  12 brokers  13 topic  14 targets

func TestKafkaSource(t *testing.T) {
	p, err := Parse("k.yaml", []byte(kafkaBase), noEnv)
	require.NoError(t, err)
	require.Equal(t, PatternCDC, p.Source.Capture.Pattern)
	require.Equal(t, "oneway-cust", p.Source.Kafka.Group)
	require.Equal(t, map[string]string{"id": "bigint", "name": "character varying(40)", "at": "timestamp(3) with time zone"}, p.Source.Types)

	var out strings.Builder
	require.NoError(t, p.Print(&out))
	again, err := Parse("printed.yaml", []byte(out.String()), noEnv)
	require.NoError(t, err, "printed config:\n%s", out.String())
	require.Equal(t, p.Source, again.Source)

	p, err = Parse("k.yaml", []byte(strings.Replace(kafkaBase, "    topic:", "    group: reporting\n    topic:", 1)), noEnv)
	require.NoError(t, err)
	require.Equal(t, "reporting", p.Source.Kafka.Group)

	// TLS and SASL, printed without the password and read back the same.
	secured := strings.Replace(kafkaBase, "    topic:", "    tls: {enabled: true}\n    sasl: {mechanism: scram-sha-512, user: cdc, password: k4fka-pw}\n    topic:", 1)
	p, err = Parse("k.yaml", []byte(secured), noEnv)
	require.NoError(t, err)
	require.Equal(t, KafkaAuth{TLS: TLS{On: true}, SASL: KafkaSASL{Mechanism: SASLSCRAMSHA512, User: "cdc", Password: "k4fka-pw"}}, p.Source.Kafka.KafkaAuth)
	out.Reset()
	require.NoError(t, p.Print(&out))
	require.NotContains(t, out.String(), "k4fka-pw")
	require.Contains(t, out.String(), "mechanism: scram-sha-512")
	_, err = Parse("k.yaml", []byte("production: true\n"+secured), noEnv)
	for _, fe := range fieldErrors(t, err) {
		require.NotContains(t, fe.Field, "source.kafka", "a kafka source with TLS and SASL passes production mode: %v", fe)
	}
}

func TestKafkaSourceErrors(t *testing.T) {
	v := func(pairs ...string) string {
		s := kafkaBase
		for i := 0; i+1 < len(pairs); i += 2 {
			require.Contains(t, s, pairs[i])
			s = strings.Replace(s, pairs[i], pairs[i+1], 1)
		}
		return s
	}
	tests := []struct {
		name, src, field string
		line             int
		msg              string
	}{
		{"url given", v("  table: customers", "  url: kafka://x\n  table: customers"), "source.url", 4, "brokers go in source.kafka.brokers"},
		{"no brokers", v("    brokers: [127.0.0.1:9092]\n", ""), "source.kafka.brokers", 12, "at least one broker"},
		{"bad broker", v("[127.0.0.1:9092]", "[127.0.0.1:9092, nohost]"), "source.kafka.brokers[1]", 12, "host:port"},
		{"no topic", v("    topic: dbserver1.public.customers\n", ""), "source.kafka.topic", 12, "required"},
		{"bad topic", v("topic: dbserver1.public.customers", "topic: 'a b'"), "source.kafka.topic", 13, "not a Kafka topic name"},
		{"empty group", v("    topic:", "    group: ''\n    topic:"), "source.kafka.group", 13, "must not be empty"},
		{"no columns", v("  columns: [id, name, at]\n", ""), "source.columns", 3, "required for kind \"kafka\""},
		{"column without type", v("columns: [id, name, at]", "columns: [id, name, at, extra]"), "source.columns[3]", 6, `column "extra" has no type`},
		{"type of no column", v("    at: timestamptz(3)", "    at: timestamptz(3)\n    other: text"), "source.types.other", 11, `"other" is not in source.columns`},
		{"unknown type", v("name: varchar(40)", "name: varchr(40)"), "source.types.name", 9, `type "varchr(40)" is not supported`},
		{"time with zone", v("name: varchar(40)", "name: timetz"), "source.types.name", 9, "is not supported"},
		{"bad numeric", v("name: varchar(40)", "name: numeric(4,6)"), "source.types.name", 9, "scale <= precision"},
		{"no types", v("  types:\n    id: int8\n    name: varchar(40)\n    at: timestamptz(3)\n", ""), "source.columns[0]", 6, "has no type"},
		{"types not a map", v("  types:\n    id: int8\n    name: varchar(40)\n    at: timestamptz(3)\n", "  types: [int8]\n"), "source.types", 7, "expected a mapping"},
		{"lookback", v("  kafka:", "  capture: {lookback: 1s}\n  kafka:"), "source.capture.lookback", 11, "not used by kind"},
		{"other pattern", v("  kafka:", "  capture: {pattern: synthetic}\n  kafka:"), "source.capture.pattern", 11, "the pattern is cdc"},
		{"kafka on postgres", strings.Replace(base, "  key: [id]", "  key: [id]\n  kafka: {topic: x}", 1), "source.kafka", 7, `only allowed when kind is "kafka"`},
		{"production without TLS", "production: true\n" + kafkaBase, "source.kafka.tls", 13, "production mode needs TLS to the brokers"},
		{"production without SASL", "production: true\n" + kafkaBase, "source.kafka.sasl", 13, "production mode needs SASL credentials"},
		{"sasl without mechanism", v("    topic:", "    sasl: {user: u, password: p}\n    topic:"), "source.kafka.sasl.mechanism", 13, "required with a user or password"},
		{"unknown mechanism", v("    topic:", "    sasl: {mechanism: gssapi, user: u, password: p}\n    topic:"), "source.kafka.sasl.mechanism", 13, `unsupported mechanism "gssapi"`},
		{"mechanism without password", v("    topic:", "    sasl: {mechanism: plain, user: u}\n    topic:"), "source.kafka.sasl.password", 13, "required with sasl.mechanism"},
		{"missing CA file", v("    topic:", "    tls: {ca_file: /nonexistent/ca.pem}\n    topic:"), "source.kafka.tls.ca_file", 13, "cannot read"},
		{"types on postgres", strings.Replace(base, "  key: [id]", "  key: [id]\n  types: {id: bigint}", 1), "source.types", 7, `only for kind "kafka"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(tt.src), noEnv)
			require.Error(t, err)
			var found []string
			for _, fe := range fieldErrors(t, err) {
				found = append(found, fe.Error())
				if fe.Field == tt.field && strings.Contains(fe.Msg, tt.msg) {
					require.Equal(t, tt.line, fe.Line, "line of %s", fe)
					return
				}
			}
			t.Fatalf("no error on %s containing %q; got:\n%s", tt.field, tt.msg, strings.Join(found, "\n"))
		})
	}
}

func TestCanonicalType(t *testing.T) {
	for in, want := range map[string]string{
		"int": "integer", "INT4": "integer", "int2": "smallint", "bigint": "bigint", "bool": "boolean",
		"float8": "double precision", "double  precision": "double precision", "float4": "real",
		"decimal(12, 2)": "numeric(12,2)", "numeric": "numeric", "numeric(5)": "numeric(5)",
		"varchar": "character varying", "varchar(40)": "character varying(40)", "char": "character(1)",
		"bpchar(3)": "character(3)", "text": "text", "date": "date",
		"timestamp": "timestamp without time zone", "timestamp(3)": "timestamp(3) without time zone",
		"timestamp with time zone": "timestamp with time zone", "timestamptz(6)": "timestamp(6) with time zone",
		"timestamp(0) with time zone": "timestamp(0) with time zone", "time": "time without time zone",
		"time(3) without time zone": "time(3) without time zone", "json": "json", "jsonb": "jsonb",
		"uuid": "uuid", "bytea": "bytea",
	} {
		got, err := CanonicalType(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		again, err := CanonicalType(got)
		require.NoError(t, err, got)
		require.Equal(t, got, again, "canonical form of %q is stable", in)
	}
	for _, bad := range []string{"", "int(3)", "integer[]", "timetz", "time with time zone", "money", "timestamp(7)", "varchar(0)", "numeric(0)", "text with time zone", "numeric(1,2,3)"} {
		_, err := CanonicalType(bad)
		require.Error(t, err, bad)
	}
}
