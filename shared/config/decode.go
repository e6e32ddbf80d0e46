package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxDecodeSteps bounds the work done while decoding, so that aliases and
// merge keys referring to each other cannot blow up a small file.
const maxDecodeSteps = 100_000

// maxAliasDepth bounds chains of aliases and nested merge keys.
const maxAliasDepth = 32

// positions records where each field was found in the file.
type positions struct {
	// lines maps a field path ("targets[1].delete") to the line of its
	// value; "" is the root mapping.
	lines map[string]int
	// set holds the paths whose value is present and not null.
	set map[string]bool
}

func newPositions() *positions {
	return &positions{lines: map[string]int{}, set: map[string]bool{}}
}

// line returns the line of the value at path or, when the field is absent,
// the line of the nearest enclosing mapping that is present. It returns 0
// when nothing is known (p is nil).
func (p *positions) line(path string) int {
	if p == nil {
		return 0
	}
	for {
		if line, ok := p.lines[path]; ok {
			return line
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// isSet reports whether the field at path is present and not null.
func (p *positions) isSet(path string) bool {
	return p != nil && p.set[path]
}

// fieldPath returns the path of field name in the mapping at path.
func fieldPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// indexPath returns the path of element i of the list at path.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// parentPath returns the path of the mapping or list containing path.
func parentPath(path string) string {
	if i := strings.LastIndexAny(path, ".["); i >= 0 {
		return path[:i]
	}
	return ""
}

// decoder decodes a node tree into a Go value strictly: every mapping key
// must be a field of the target struct and every value must have the
// field's type. It collects all problems instead of stopping at the first.
type decoder struct {
	file  string
	pos   *positions
	skip  map[*yaml.Node]bool // nodes already reported (failed expansion)
	errs  []error
	steps int
}

// entry is one key/value pair of a mapping after merge keys were resolved.
type entry struct {
	key   string
	line  int // line of the key
	value *yaml.Node
}

func (d *decoder) fail(line int, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{File: d.file, Line: line, Field: path, Msg: fmt.Sprintf(format, args...)})
}

// budget counts one step of work and reports whether decoding may go on.
func (d *decoder) budget(line int, path string) bool {
	d.steps++
	if d.steps == maxDecodeSteps+1 {
		d.fail(line, path, "document is too complex (too many aliases or merge keys)")
	}
	return d.steps <= maxDecodeSteps
}

// reflectValue returns the settable value v points to.
func reflectValue(v any) reflect.Value {
	return reflect.ValueOf(v).Elem()
}

// decode decodes n into v; path names v in error messages.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if !d.budget(n.Line, path) {
		return
	}
	d.pos.lines[path] = n.Line
	n, ok := d.resolve(n, path)
	if !ok || d.skip[n] || isNull(n) {
		return
	}
	d.pos.set[path] = true

	if v.CanAddr() {
		if u, ok := v.Addr().Interface().(yaml.Unmarshaler); ok {
			if err := u.UnmarshalYAML(n); err != nil {
				d.fail(n.Line, path, "%v", err)
			}
			return
		}
	}

	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n.Line, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), indexPath(path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n.Line, path, "expected a mapping, got %s", describe(n))
			return
		}
		if v.Type().Key().Kind() != reflect.String {
			d.fail(n.Line, path, "cannot decode into %s", v.Type())
			return
		}
		m := reflect.MakeMap(v.Type())
		for _, e := range d.entries(n, path, 0) {
			child := fieldPath(path, e.key)
			d.pos.lines[child] = e.line
			val := reflect.New(v.Type().Elem()).Elem()
			d.decode(e.value, val, child)
			m.SetMapIndex(reflect.ValueOf(e.key).Convert(v.Type().Key()), val)
		}
		v.Set(m)
	case reflect.Pointer:
		e := reflect.New(v.Type().Elem())
		d.decode(n, e.Elem(), path)
		v.Set(e)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n.Line, path, "expected a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.Decode(&i) != nil {
			d.fail(n.Line, path, "expected an integer, got %s", describe(n))
			return
		}
		if v.OverflowInt(i) {
			d.fail(n.Line, path, "integer %d is out of range", i)
			return
		}
		v.SetInt(i)
	case reflect.Float32, reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || n.Decode(&f) != nil {
			d.fail(n.Line, path, "expected a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			d.fail(n.Line, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	default:
		// Only reachable if a field of an unsupported type is added to the
		// configuration structs.
		d.fail(n.Line, path, "cannot decode into %s", v.Type())
	}
}

// decodeStruct decodes the mapping n into the struct v.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	for _, e := range d.entries(n, path, 0) {
		child := fieldPath(path, e.key)
		i, ok := fields[e.key]
		if !ok {
			d.fail(e.line, child, "unknown field %q", e.key)
			continue
		}
		d.decode(e.value, v.FieldByIndex(i), child)
	}
}

// entries returns the key/value pairs of the mapping n, with "<<" merge keys
// resolved: keys written in n win over merged ones, and of several merged
// mappings the first wins. Keys written twice in n are reported.
func (d *decoder) entries(n *yaml.Node, path string, depth int) []entry {
	var explicit, merged []entry
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !d.budget(n.Line, path) {
			return nil
		}
		key, value := n.Content[i], n.Content[i+1]
		key, ok := d.resolve(key, path)
		if !ok {
			continue
		}
		if key.Kind != yaml.ScalarNode {
			d.fail(key.Line, path, "a mapping key must be a string, got %s", describe(key))
			continue
		}
		if key.Value == "<<" && key.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(value, path, depth)...)
			continue
		}
		if line, dup := first[key.Value]; dup {
			d.fail(key.Line, fieldPath(path, key.Value), "field %q is already set on line %d", key.Value, line)
			continue
		}
		first[key.Value] = key.Line
		explicit = append(explicit, entry{key: key.Value, line: key.Line, value: value})
	}
	for _, e := range merged {
		if _, dup := first[e.key]; !dup {
			first[e.key] = e.line
			explicit = append(explicit, e)
		}
	}
	return explicit
}

// merge returns the entries a "<<" merge key with value n contributes.
func (d *decoder) merge(n *yaml.Node, path string, depth int) []entry {
	if depth >= maxAliasDepth {
		d.fail(n.Line, path, "merge keys are nested too deeply")
		return nil
	}
	n, ok := d.resolve(n, path)
	if !ok {
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		return d.entries(n, path, depth+1)
	case yaml.SequenceNode:
		var out []entry
		for _, c := range n.Content {
			c, ok := d.resolve(c, path)
			if !ok {
				continue
			}
			if c.Kind != yaml.MappingNode {
				d.fail(c.Line, path, "a merge key (<<) needs a mapping or a list of mappings, got %s", describe(c))
				continue
			}
			out = append(out, d.entries(c, path, depth+1)...)
		}
		return out
	default:
		d.fail(n.Line, path, "a merge key (<<) needs a mapping or a list of mappings, got %s", describe(n))
		return nil
	}
}

// resolve follows aliases to the node they refer to.
func (d *decoder) resolve(n *yaml.Node, path string) (*yaml.Node, bool) {
	for i := 0; n.Kind == yaml.AliasNode; i++ {
		if n.Alias == nil || i == maxAliasDepth {
			d.fail(n.Line, path, "cannot resolve alias *%s", n.Value)
			return nil, false
		}
		n = n.Alias
	}
	return n, true
}

// isNull reports whether n is a null scalar ("", "~", "null").
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names the kind of value n holds, for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(clip(n.Value))
	default:
		return "an unsupported node"
	}
}

// yamlFields maps the YAML names of t's fields to their index paths
// (reflect.Value.FieldByIndex). A field's name is the first part of its
// yaml tag, or its lower-cased Go name; "-" skips the field; an embedded
// struct tagged ",inline" contributes its own fields.
func yamlFields(t reflect.Type) map[string][]int {
	fields := make(map[string][]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.Anonymous && name == "" && opts == "inline" && f.Type.Kind() == reflect.Struct {
			for n, idx := range yamlFields(f.Type) {
				fields[n] = append([]int{i}, idx...)
			}
			continue
		}
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		fields[name] = []int{i}
	}
	return fields
}
