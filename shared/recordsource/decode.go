package recordsource

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// Decoder turns one record (a CSV row, a JSON object) into owned values
// in PostgreSQL's text. It is safe for concurrent use.
type Decoder struct {
	cols  []Column
	convs []conv
	key   []bool
}

// NewDecoder returns the decoder of cols, whose key columns must not be
// missing or null. An unsupported type is a permanent error.
func NewDecoder(cols []Column, key []string) (*Decoder, error) {
	d := &Decoder{cols: cols}
	for _, c := range cols {
		cv, err := converter(c.Type)
		if err != nil {
			return nil, errs.Permanent(fmt.Errorf("column %q: %w", c.Name, err))
		}
		d.convs = append(d.convs, cv)
		d.key = append(d.key, slices.Contains(key, c.Name))
	}
	return d, nil
}

// CSV returns the decoding of the rows under header: each declared column
// must be in it.
func (d *Decoder) CSV(header []string) (func(fields []string) (source.Row, error), error) {
	pos := make([]int, len(d.cols))
	for i, c := range d.cols {
		pos[i] = slices.Index(header, c.Name)
		if pos[i] < 0 {
			return nil, errs.Permanentf("the header has no column %q (it has %q)", c.Name, header)
		}
	}
	return func(fields []string) (source.Row, error) {
		row := make(source.Row, len(d.cols))
		for i, p := range pos {
			v, err := d.convs[i].fromString(fields[p])
			if err == nil && v == nil && d.key[i] {
				err = fmt.Errorf("a key column is empty")
			}
			if err != nil {
				return nil, errs.Permanent(fmt.Errorf("field %q: %w", d.cols[i].Name, err))
			}
			row[i] = v
		}
		return row, nil
	}, nil
}

// JSON decodes one JSON object. A missing field is NULL.
func (d *Decoder) JSON(obj []byte) (source.Row, error) {
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(obj))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, errs.Permanent(fmt.Errorf("not a JSON object: %w", err))
	}
	return d.Object(m)
}

// Object decodes one decoded JSON object. A missing field is NULL.
func (d *Decoder) Object(m map[string]json.RawMessage) (source.Row, error) {
	row := make(source.Row, len(d.cols))
	for i, c := range d.cols {
		v, err := d.convs[i].fromJSON(m[c.Name])
		if err == nil && v == nil && d.key[i] {
			err = fmt.Errorf("a key field is missing or null")
		}
		if err != nil {
			return nil, errs.Permanent(fmt.Errorf("field %q: %w", c.Name, err))
		}
		row[i] = v
	}
	return row, nil
}
