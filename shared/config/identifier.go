package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// maxIdentifierLen is PostgreSQL's limit on identifiers (NAMEDATALEN-1).
const maxIdentifierLen = 63

// defaultSchema is the schema of a table named without one.
const defaultSchema = "public"

// identifierRe is the shape of a table, schema or column name. Mixed case is
// allowed: identifiers are always quoted when used in SQL.
var identifierRe = regexp.MustCompile(`^[\p{L}_][\p{L}\p{N}_$]*$`)

// ErrInvalidIdentifier is wrapped by the errors of ValidIdentifier and
// SplitTable.
var ErrInvalidIdentifier = errors.New("not a valid identifier")

// ValidIdentifier checks that s can be used as a table, schema or column
// name: 1 to 63 bytes, starting with a letter or underscore, followed by
// letters, digits, underscores and dollar signs.
func ValidIdentifier(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: the name is empty", ErrInvalidIdentifier)
	case len(s) > maxIdentifierLen:
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrInvalidIdentifier, clip(s), maxIdentifierLen)
	case !identifierRe.MatchString(s):
		return fmt.Errorf("%w: %q (use a letter or _ first, then letters, digits, _ or $)", ErrInvalidIdentifier, s)
	}
	return nil
}

// SplitTable splits "schema.table" into its parts; a bare "table" is in
// schema "public". Both parts must be valid identifiers.
func SplitTable(s string) (schema, table string, err error) {
	parts := strings.Split(s, ".")
	switch len(parts) {
	case 1:
		schema, table = defaultSchema, parts[0]
		if err := ValidIdentifier(table); err != nil {
			return "", "", err
		}
		return schema, table, nil
	case 2:
		schema, table = parts[0], parts[1]
	default:
		return "", "", fmt.Errorf("%w: %q has more than one dot (want \"table\" or \"schema.table\")", ErrInvalidIdentifier, clip(s))
	}
	if err := ValidIdentifier(schema); err != nil {
		return "", "", fmt.Errorf("schema of %q: %w", s, err)
	}
	if err := ValidIdentifier(table); err != nil {
		return "", "", fmt.Errorf("table of %q: %w", s, err)
	}
	return schema, table, nil
}

// SplitMySQLTable splits a MySQL target's table: "db.table" names the
// database; "table" and "public.table" (the PostgreSQL default schema)
// mean the DSN's database, returned as "".
func SplitMySQLTable(s string) (database, table string, err error) {
	database, table, err = SplitTable(s)
	if database == defaultSchema {
		database = ""
	}
	return database, table, err
}
