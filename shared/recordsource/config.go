package recordsource

import (
	"fmt"
	"log/slog"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
)

// Open returns the Source of a csv, jsonl or http source as configured:
// the reader and `oneway verify` both open it here, so they read the same
// values. The caller closes it.
func Open(src config.Source, log *slog.Logger) (*Source, error) {
	names, types := src.RecordColumns()
	cols := make([]Column, len(names))
	for i := range names {
		cols[i] = Column{Name: names[i], Type: types[i]}
	}
	dec, err := NewDecoder(cols, src.Key)
	if err != nil {
		return nil, errs.Permanent(fmt.Errorf("%s source: %w", src.Kind, err))
	}
	o := Options{Columns: cols, Key: src.Key}
	var l Lister
	switch src.Kind {
	case config.KindCSV, config.KindJSONL:
		o.What = src.Kind + " file " + src.URL.Value()
		if l, err = NewFile(src.URL.Value(), src.Kind, dec); err != nil {
			return nil, err
		}
	case config.KindHTTP:
		h := src.HTTP
		ho := HTTPOptions{URL: src.URL.Value(), Timeout: h.Timeout.Duration, MaxAttempts: h.MaxAttempts, PageSize: h.PageSize,
			RecordsField: h.RecordsField, NextTokenField: h.NextTokenField, PageTokenParam: h.PageTokenParam,
			LimitParam: h.LimitParam, ModifiedSinceParam: h.ModifiedSinceParam}
		for _, hd := range h.Headers {
			ho.Headers = append(ho.Headers, Header{Name: hd.Name, Value: hd.Value.Value()})
		}
		hl, err := NewHTTP(ho, dec, log)
		if err != nil {
			return nil, err
		}
		o.What, o.Replace, l = "http "+hl.what, true, hl
		if src.Capture.Pattern == config.PatternWatermark || src.Capture.Pattern == config.PatternWatermarkCDC {
			o.Watermark = src.Capture.Column
		}
	default:
		return nil, errs.Permanentf("source kind %q is not a csv, jsonl or http source", src.Kind)
	}
	return New(o, l, log)
}
