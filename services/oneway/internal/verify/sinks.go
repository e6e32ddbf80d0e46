package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// envelope is the document the NATS, Kafka and JSONL targets write per
// change (README, "Other targets"):
//
//	{"op":"upsert"|"delete","key":"…","fields":{…},"version":N}
//
// key is the record key as event.Key renders it; fields holds the owned
// columns typed as JSON (numbers, booleans, json/jsonb documents, strings,
// null); a delete carries only the key columns.
type envelope struct {
	Op      string                     `json:"op"`
	Key     *string                    `json:"key"`
	Fields  map[string]json.RawMessage `json:"fields"`
	Version *int64                     `json:"version"`
}

// change turns a decoded envelope into a Change.
func (l *Layout) change(e envelope) (Change, error) {
	if e.Key == nil || e.Version == nil {
		return Change{}, errors.New(`not a change envelope: no "key" or no "version"`)
	}
	parts, err := l.ParseName(*e.Key)
	if err != nil {
		return Change{}, err
	}
	switch e.Op {
	case "delete":
		return Change{Row: l.keyRow(parts), Name: *e.Key, Delete: true, Version: *e.Version}, nil
	case "upsert":
	default:
		return Change{}, fmt.Errorf("key %s: unknown op %q", *e.Key, e.Op)
	}
	row := make([][]byte, len(l.Columns))
	for i, c := range l.Columns {
		raw, ok := e.Fields[c.Name]
		if !ok {
			row[i] = Absent
			continue
		}
		if row[i], err = jsonText(raw, l.classes[i]); err != nil {
			return Change{}, fmt.Errorf("key %s, field %q: %w", *e.Key, c.Name, err)
		}
	}
	// The key comes from "key", the rendering of the source's texts (a
	// field carries it typed).
	for i, k := range l.keyCols {
		row[k] = []byte(parts[i])
	}
	return Change{Row: row, Name: *e.Key, Version: *e.Version}, nil
}

// jsonText is the text of one JSON field value of a column of class c: a
// json/jsonb column's document as it is (compact); otherwise a string
// unquoted, a number as written, true/false as t/f; null is nil (NULL).
func jsonText(raw json.RawMessage, c class) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("empty value")
	}
	if string(raw) == "null" {
		return nil, nil
	}
	if c == classJSON {
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return nil, err
		}
		return b.Bytes(), nil
	}
	switch raw[0] {
	case 't', 'f':
		if string(raw) == "true" {
			return []byte("t"), nil
		}
		return []byte("f"), nil
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return []byte(s), nil
	case '{', '[':
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return nil, err
		}
		return b.Bytes(), nil
	}
	return append([]byte{}, raw...), nil
}

// decodeEnvelope decodes one document, keeping numbers as written.
func decodeEnvelope(data []byte) (envelope, error) {
	var e envelope
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&e); err != nil {
		return envelope{}, err
	}
	return e, nil
}

// ScanJSONL is a Scan of a JSONL target's file: one change envelope per
// line. A last line without its newline is the tail of a write still in
// progress (or cut by a crash, to be cut by the next write) and is not
// read; a line that is not an envelope is an error naming its number.
func ScanJSONL(path string, l *Layout) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("jsonl file: %w", err)
		}
		defer f.Close()
		r := bufio.NewReaderSize(f, 1<<16)
		for n := 1; ; n++ {
			if n%1000 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			line, err := r.ReadBytes('\n')
			if errors.Is(err, io.EOF) {
				return nil // a partial last line, or none
			}
			if err != nil {
				return fmt.Errorf("read jsonl file %s: %w", path, err)
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			e, err := decodeEnvelope(line)
			if err != nil {
				return fmt.Errorf("jsonl file %s line %d: %w", path, n, err)
			}
			c, err := l.change(e)
			if err != nil {
				return fmt.Errorf("jsonl file %s line %d: %w", path, n, err)
			}
			if err := emit(c); err != nil {
				return err
			}
		}
	}
}

// parseVersion reads a version header.
func parseVersion(h string) (int64, error) {
	v, err := strconv.ParseInt(h, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("version header %q: %w", h, err)
	}
	return v, nil
}
