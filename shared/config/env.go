package config

import (
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// envNameRe is what a variable name in ${NAME} must look like.
var envNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandEnv expands environment variable references in every scalar value
// of the tree rooted at root (mapping keys are left alone). Aliases are not
// followed: the node they point to is expanded where its anchor is defined,
// exactly once.
//
// It returns the nodes whose expansion failed, so that the decoder skips
// them instead of reporting a second error for the same value, and the
// errors, one per problem.
func expandEnv(file string, root *yaml.Node, env func(string) (string, bool)) (map[*yaml.Node]bool, []error) {
	failed := map[*yaml.Node]bool{}
	var errs []error

	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, indexPath(path, i))
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key, value := n.Content[i], n.Content[i+1]
				child := path
				if key.Kind == yaml.ScalarNode && key.Value != "<<" {
					child = fieldPath(path, key.Value)
				}
				walk(value, child)
			}
		case yaml.ScalarNode:
			value, problems := expand(n.Value, env)
			for _, msg := range problems {
				errs = append(errs, &FieldError{File: file, Line: n.Line, Field: path, Msg: msg})
			}
			if len(problems) > 0 {
				failed[n] = true
				return
			}
			if value != n.Value {
				n.Value = value
				if n.Style&yaml.TaggedStyle == 0 {
					// Let the expanded value resolve to its own type, so
					// that "batch_size: ${BATCH:-500}" is an integer and
					// "url: ${URL:-}" is null.
					n.Tag = ""
				}
			}
		}
	}
	walk(root, "")
	return failed, errs
}

// expand replaces ${NAME}, ${NAME:-default} and $$ in s. A $ followed by
// anything else is kept as is. It returns the expanded string and a message
// for every reference that could not be expanded.
func expand(s string, env func(string) (string, bool)) (string, []string) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var (
		b        strings.Builder
		problems []string
	)
	for i := 0; i < len(s); {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			i++
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i += 2
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				problems = append(problems, fmt.Sprintf("unterminated variable reference %q (want ${NAME} or ${NAME:-default}; write $$ for a literal $)", clip(s[i:])))
				return s, problems
			}
			ref := s[i+2 : i+2+end]
			i += 2 + end + 1
			name, def, hasDefault := strings.Cut(ref, ":-")
			if strings.Contains(def, "${") {
				problems = append(problems, fmt.Sprintf("nested variable reference in %q is not supported (a default is literal text)", clip("${"+ref+"}")))
				continue
			}
			if !envNameRe.MatchString(name) {
				problems = append(problems, fmt.Sprintf("invalid variable reference %q (want ${NAME} or ${NAME:-default}; write $$ for a literal $)", clip("${"+ref+"}")))
				continue
			}
			value, ok := env(name)
			switch {
			case hasDefault && (!ok || value == ""):
				value = def
			case !ok:
				problems = append(problems, fmt.Sprintf("environment variable %s is not set", name))
				continue
			}
			b.WriteString(value)
		default:
			b.WriteByte('$')
			i++
		}
	}
	return b.String(), problems
}

// clip shortens s for use in an error message.
func clip(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
