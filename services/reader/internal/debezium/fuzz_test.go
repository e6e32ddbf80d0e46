package debezium

import (
	"testing"
)

// fuzzCols covers every type family the converter knows.
var fuzzCols = []Column{
	{"id", "bigint"}, {"k2", "text"}, {"n", "numeric(12,2)"}, {"at", "timestamp with time zone"},
	{"ts", "timestamp without time zone"}, {"d", "date"}, {"t", "time without time zone"},
	{"b", "boolean"}, {"f", "double precision"}, {"r", "real"}, {"i", "integer"}, {"s", "smallint"},
	{"j", "jsonb"}, {"u", "uuid"}, {"raw", "bytea"}, {"c", "character varying(5)"}, {"free", "numeric"},
}

// FuzzDecode feeds arbitrary record keys and values to the decoder: it
// must return an event, a tombstone or an error, never panic, and an event
// has one value per column with a non-NULL key.
func FuzzDecode(f *testing.F) {
	const src = `"source":{"connector":"postgresql","lsn":1}`
	seeds := [][2]string{
		{``, `{"before":null,"after":{"id":1,"k2":"a","n":"12.5","at":"2024-01-31T12:34:56.5Z","ts":1706704496000000,"d":19753,"t":45296000000,"b":true,"f":1.5,"r":"NaN","i":7,"s":-3,"j":"{\"a\":[1,2]}","u":"4f2c8f7e-1b2a-4c3d-9e8f-0a1b2c3d4e5f","raw":"AAEC","c":"héllo","free":"1e3"},"op":"c",` + src + `}`},
		{``, `{"before":{"id":3,"k2":"x"},"after":null,"op":"d",` + src + `}`},
		{`{"id":5,"k2":"y"}`, `{"before":null,"after":null,"op":"d"}`},
		{`{"schema":{"type":"struct","fields":[{"field":"id","type":"int64"}]},"payload":{"id":6,"k2":"z"}}`, `{"before":null,"after":null,"op":"d"}`},
		{``, withSchema(`{"before":null,"after":{"id":7,"name":"Bo","balance":"AOI=","at":"2024-01-31T12:34:56.123456+02:00"},"op":"c"}`)},
		{``, `{"schema":{"type":"struct","fields":[{"field":"after","type":"struct","fields":[{"field":"n","type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"-3"}}]}]},"payload":{"op":"u","after":{"id":1,"k2":"a","n":"/x4="}}}`},
		{``, `{"op":"t"}`},
		{`{"id":3}`, ``},
		{``, `null`},
		{``, `{"schema":{},"payload":null}`},
		{``, `[1]`},
	}
	for _, s := range seeds {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	d := NewDecoder(fuzzCols, []int{0, 1})
	f.Fuzz(func(t *testing.T, key, value []byte) {
		ev, ok, err := d.Decode(key, value)
		if err != nil || !ok {
			return
		}
		if len(ev.Values) != len(fuzzCols) {
			t.Fatalf("%d values for %d columns", len(ev.Values), len(fuzzCols))
		}
		for _, k := range []int{0, 1} {
			if ev.Values[k] == nil {
				t.Fatalf("key column %s is NULL in a decoded event", fuzzCols[k].Name)
			}
		}
	})
}
