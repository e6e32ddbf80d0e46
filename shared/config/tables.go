package config

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// expandTables turns a file with source.tables (already decoded into p,
// with pos) into one validated pipeline per table.
func (p *Pipeline) expandTables(pos *positions) ([]*Pipeline, error) {
	c := &checker{file: p.File, pos: pos, pipeline: p.Pipeline}
	for _, f := range []string{"source.table", "source.key", "source.columns"} {
		if pos.isSet(f) {
			c.add(f, "not allowed with source.tables: give it for each table there")
		}
	}
	if p.Source.Kind == KindKafka {
		c.add("source.tables", "not for a %s source: one topic holds the events of one table", KindKafka)
	}
	for _, f := range []string{"slot", "publication"} {
		if pos.isSet("source.capture." + f) {
			c.add("source.capture."+f, "not allowed with source.tables: each table's pipeline has its own (default oneway_<pipeline>_<table>); set it per table (source.tables[].capture.%s) if need be", f)
		}
	}
	for i := range p.Targets {
		if f := indexPath("targets", i) + ".table"; pos.isSet(f) {
			c.add(f, "not allowed with source.tables: every table has its own target table (source.tables[].target_table, default the source table)")
		}
	}
	if !nameRe.MatchString(p.Pipeline) {
		c.add("pipeline", "%q is not a valid name: it must match %s", p.Pipeline, nameRe)
	}
	if len(p.Source.Tables) == 0 {
		c.add("source.tables", "at least one table is required")
	}
	names := make([]string, len(p.Source.Tables))
	seen := map[string]int{}
	for i, t := range p.Source.Tables {
		path := indexPath("source.tables", i)
		suffix, field := t.Name, path+".name"
		if !pos.isSet(field) {
			suffix, field = tableSuffix(t.Table), path+".table"
		}
		if t.Table == "" {
			c.add(path+".table", "required")
			continue
		}
		name := p.Pipeline + "_" + suffix
		if !nameRe.MatchString(name) {
			c.add(field, "the table's pipeline name %q is not valid: it must match %s (the pipeline's name, _ and the table's; set %s.name to a shorter suffix)", name, nameRe, path)
			continue
		}
		if j, dup := seen[name]; dup {
			c.add(field, "pipeline name %q is already that of source.tables[%d]: set %s.name", name, j, path)
			continue
		}
		seen[name], names[i] = i, name
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}

	out := make([]*Pipeline, len(p.Source.Tables))
	var errs []error
	reported := map[string]bool{}
	for i := range p.Source.Tables {
		q, qpos, rename := p.forTable(i, names[i], pos)
		q.applyDefaults(qpos)
		err := q.validate(qpos)
		var joined interface{ Unwrap() []error }
		if errors.As(err, &joined) {
			for _, e := range joined.Unwrap() {
				fe, ok := e.(*FieldError)
				if !ok {
					errs = append(errs, e)
					continue
				}
				// Name the field as written in the file; a problem of a
				// shared setting is reported once.
				fe2 := *fe
				if f, ok := renameField(fe2.Field, rename); ok {
					fe2.Field = f
					fe2.Msg = "pipeline " + q.Pipeline + ": " + fe2.Msg
				}
				if s := fe2.Error(); !reported[s] {
					reported[s] = true
					errs = append(errs, &fe2)
				}
			}
		} else if err != nil {
			errs = append(errs, err)
		}
		out[i] = q
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// forTable returns the pipeline of table i, named name, before defaults:
// a copy of p whose source has that table's settings, with the positions
// as if the file had been written for that table alone, and the map from
// those positions' fields back to the file's.
func (p *Pipeline) forTable(i int, name string, pos *positions) (*Pipeline, *positions, map[string]string) {
	t := p.Source.Tables[i]
	prefix := indexPath("source.tables", i) + "."
	q := *p
	q.Pipeline, q.Group = name, p.Pipeline
	q.Source.Tables = nil
	q.Source.Table, q.Source.Key, q.Source.Columns = t.Table, slices.Clone(t.Key), slices.Clone(t.Columns)
	q.Source.Types = maps.Clone(p.Source.Types)
	q.Source.Capture = p.Source.Capture
	over, into := reflect.ValueOf(t.Capture), reflect.ValueOf(&q.Source.Capture).Elem()
	for field, j := range yamlFields(over.Type()) {
		if pos.isSet(prefix + "capture." + field) {
			into.FieldByIndex(j).Set(over.FieldByIndex(j))
		}
	}
	q.Targets = make([]Target, len(p.Targets))
	for j, tg := range p.Targets {
		if tg.Readback != nil {
			rb := *tg.Readback
			tg.Readback = &rb
		}
		if t.TargetTable != "" {
			tg.Table = t.TargetTable
		}
		q.Targets[j] = tg
	}

	qpos := newPositions()
	maps.Copy(qpos.lines, pos.lines)
	maps.Copy(qpos.set, pos.set)
	rename := map[string]string{}
	move := func(from, to string) {
		if line, ok := pos.lines[from]; ok {
			qpos.lines[to] = line
		}
		if pos.set[from] {
			qpos.set[to] = true
		}
		rename[to] = from
	}
	for _, f := range []string{"table", "key", "columns"} {
		move(prefix+f, "source."+f)
	}
	for field := range yamlFields(reflect.TypeFor[Capture]()) {
		if pos.isSet(prefix + "capture." + field) {
			move(prefix+"capture."+field, "source.capture."+field)
		}
	}
	if pos.isSet(prefix + "target_table") {
		for j := range p.Targets {
			move(prefix+"target_table", indexPath("targets", j)+".table")
		}
	}
	return &q, qpos, rename
}

// renameField maps a field of a table's pipeline (or one inside it, such
// as source.key[1]) to the file's field.
func renameField(field string, rename map[string]string) (string, bool) {
	for to, from := range rename {
		if field == to {
			return from, true
		}
		if rest, ok := strings.CutPrefix(field, to); ok && (rest[0] == '[' || rest[0] == '.') {
			return from + rest, true
		}
	}
	return field, false
}

// tableSuffix is the default pipeline suffix of a source table: its name
// without schema or database, in lower case, with every character other
// than a-z, 0-9 and _ turned into _.
func tableSuffix(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		table = table[i+1:]
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '_'
	}, table)
}
