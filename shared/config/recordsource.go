package config

import (
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"
)

// IsRecordSource reports whether kind is a source that lists its records
// (csv, jsonl, http) with declared columns, read by shared/recordsource.
func IsRecordSource(kind string) bool {
	return kind == KindCSV || kind == KindJSONL || kind == KindHTTP
}

// RecordColumns returns the declared columns of a csv, jsonl or http
// source in source.columns order, with their types (text when
// source.types has none).
func (s *Source) RecordColumns() (names, types []string) {
	for _, c := range s.Columns {
		t := s.Types[c]
		if t == "" {
			t = "text"
		}
		names = append(names, c)
		types = append(types, t)
	}
	return names, types
}

func (h *HTTPSource) defaults(unset func(string) bool) {
	const f = "source.http."
	if unset(f + "timeout") {
		h.Timeout = Duration{30 * time.Second}
	}
	if unset(f + "max_attempts") {
		h.MaxAttempts = 8
	}
	if unset(f + "page_size") {
		h.PageSize = 500
	}
	if unset(f + "records_field") {
		h.RecordsField = "data"
	}
	if unset(f + "next_token_field") {
		h.NextTokenField = "next_page_token"
	}
	if unset(f + "page_token_param") {
		h.PageTokenParam = "page_token"
	}
	if unset(f + "limit_param") {
		h.LimitParam = "limit"
	}
	if unset(f + "modified_since_param") {
		h.ModifiedSinceParam = "modified_since"
	}
}

// validateRecord checks a csv, jsonl or http source: declared columns and
// types, the patterns it supports, and (http) the API settings.
func (s *Source) validateRecord(c *checker) {
	if len(s.Columns) == 0 {
		c.add("source.columns", "required for kind %q: the owned columns (a %s source has no catalog); types go in source.types (default text)", s.Kind, s.Kind)
	}
	cols := make([]string, 0, len(s.Types))
	for col := range s.Types {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	for _, col := range cols {
		field := "source.types." + col
		if !slices.Contains(s.Columns, col) {
			c.add(field, "%q is not in source.columns", col)
			continue
		}
		typ, err := CanonicalType(s.Types[col])
		if err != nil {
			c.add(field, "%v", err)
			continue
		}
		if typ == "bytea" || typ == "jsonb" || strings.HasPrefix(typ, "time(") || typ == "time without time zone" || strings.HasPrefix(typ, "character(") {
			c.add(field, "type %q is not supported for kind %q (text, varchar(n), smallint, integer, bigint, numeric(p,s), real, double precision, boolean, date, timestamp(p), timestamptz(p), uuid, json)", typ, s.Kind)
		}
	}
	if !reflect.DeepEqual(s.Kafka, KafkaSource{}) {
		c.add("source.kafka", "only allowed when kind is %q", KindKafka)
	}
	p := s.Capture.Pattern
	switch {
	case s.Kind == KindHTTP:
		if p != PatternSynthetic && p != PatternWatermark && p != PatternWatermarkCDC {
			c.add("source.capture.pattern", "kind %q supports %s (a full listing each cycle: finds deletes), %s and %s (the API's modified-since parameter), got %q",
				s.Kind, PatternSynthetic, PatternWatermark, PatternWatermarkCDC, p)
		}
		s.HTTP.validate(c)
	case p != PatternSynthetic:
		c.add("source.capture.pattern", "kind %q supports only %s (a file is read whole each cycle), got %q", s.Kind, PatternSynthetic, p)
	}
	if s.Kind != KindHTTP && !reflect.DeepEqual(s.HTTP, HTTPSource{}) {
		c.add("source.http", "only allowed when kind is %q", KindHTTP)
	}
	validateRecordURL(c, s)
	if !reflect.DeepEqual(s.Capture.DeleteFeed, DeleteFeed{}) {
		c.add("source.capture.delete_feed", "not supported for kind %q: a listing holds live records; the synthetic pattern finds deletes", s.Kind)
	}
}

func (h *HTTPSource) validate(c *checker) {
	const f = "source.http."
	for i, hd := range h.Headers {
		if hd.Name == "" || strings.ContainsAny(hd.Name, " :\r\n") {
			c.add(indexPath(f+"headers", i)+".name", "not a valid header name: %q", hd.Name)
		}
	}
	if h.Timeout.Duration <= 0 {
		c.add(f+"timeout", "must be > 0, got %s", h.Timeout)
	}
	if h.MaxAttempts < 1 {
		c.add(f+"max_attempts", "must be >= 1, got %d", h.MaxAttempts)
	}
	if h.PageSize < 1 || h.PageSize > 100_000 {
		c.add(f+"page_size", "must be between 1 and 100000, got %d", h.PageSize)
	}
	for name, v := range map[string]string{"records_field": h.RecordsField, "next_token_field": h.NextTokenField,
		"page_token_param": h.PageTokenParam, "limit_param": h.LimitParam, "modified_since_param": h.ModifiedSinceParam} {
		if v == "" {
			c.add(f+name, "must not be empty")
		}
	}
}

// validateRecordURL checks an http source's URL.
func validateRecordURL(c *checker, s *Source) {
	if s.Kind != KindHTTP || s.URL == "" {
		return
	}
	u, err := url.Parse(s.URL.Value())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.add("source.url", "kind %q needs the collection's http:// or https:// URL, got %s", KindHTTP, s.URL)
	}
}
