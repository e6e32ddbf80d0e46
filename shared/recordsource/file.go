package recordsource

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// File formats.
const (
	FormatCSV   = "csv"
	FormatJSONL = "jsonl"
)

// File lists the records of a file: CSV with a header row naming the
// columns (RFC 4180: quoted fields may hold commas, quotes and newlines),
// or JSONL, one JSON object per line (blank lines are skipped). Each List
// reads the whole file again; a producer should replace the file
// atomically (write another file, then rename it over this one), so that
// a listing never sees half a rewrite.
type File struct {
	path   string
	format string
	dec    *Decoder
}

var _ Lister = (*File)(nil)

// NewFile returns the lister of the file at path in format (FormatCSV or
// FormatJSONL).
func NewFile(path, format string, dec *Decoder) (*File, error) {
	if format != FormatCSV && format != FormatJSONL {
		return nil, errs.Permanentf("file %s: unknown format %q (csv, jsonl)", path, format)
	}
	return &File{path: path, format: format, dec: dec}, nil
}

// List implements Lister. A row that does not decode is a permanent error
// naming the file, the line and the field.
func (f *File) List(ctx context.Context, emit func(row source.Row, where string) error) error {
	fh, err := os.Open(f.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errs.Permanent(fmt.Errorf("read %s file: %w", f.format, err))
		}
		return fmt.Errorf("read %s file: %w", f.format, err)
	}
	defer fh.Close()
	if f.format == FormatCSV {
		return f.listCSV(ctx, fh, emit)
	}
	return f.listJSONL(ctx, fh, emit)
}

func (f *File) listCSV(ctx context.Context, in io.Reader, emit func(source.Row, string) error) error {
	r := csv.NewReader(bufio.NewReaderSize(in, 1<<16))
	r.ReuseRecord = true
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return errs.Permanentf("file %s: empty: a CSV source needs a header row", f.path)
	}
	if err != nil {
		return errs.Permanent(fmt.Errorf("file %s: header: %w", f.path, err))
	}
	header = append([]string(nil), header...)
	if len(header) > 0 {
		header[0] = trimBOM(header[0])
	}
	decode, err := f.dec.CSV(header)
	if err != nil {
		return errs.Permanent(fmt.Errorf("file %s line 1: %w", f.path, err))
	}
	for n := 0; ; n++ {
		if n%1000 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		fields, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return errs.Permanent(fmt.Errorf("file %s: %w", f.path, err)) // csv.ParseError names the line
		}
		line, _ := r.FieldPos(0)
		where := fmt.Sprintf("file %s line %d", f.path, line)
		row, err := decode(fields)
		if err != nil {
			return errs.Permanent(fmt.Errorf("%s: %w", where, err))
		}
		if err := emit(row, where); err != nil {
			return err
		}
	}
}

func trimBOM(s string) string {
	if len(s) >= 3 && s[:3] == "\xef\xbb\xbf" {
		return s[3:]
	}
	return s
}

func (f *File) listJSONL(ctx context.Context, in io.Reader, emit func(source.Row, string) error) error {
	r := bufio.NewReaderSize(in, 1<<16)
	for line := 1; ; line++ {
		if line%1000 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		b, err := r.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read jsonl file %s: %w", f.path, err)
		}
		if line == 1 {
			b = []byte(trimBOM(string(b)))
		}
		if len(bytes.TrimSpace(b)) > 0 {
			where := fmt.Sprintf("file %s line %d", f.path, line)
			row, derr := f.dec.JSON(b)
			if derr != nil {
				return errs.Permanent(fmt.Errorf("%s: %w", where, derr))
			}
			if eerr := emit(row, where); eerr != nil {
				return eerr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
}
