package config

import "fmt"

// ValidName checks that s is a valid pipeline or target name: a lower-case
// letter, then up to 39 lower-case letters, digits or underscores. Such
// names are safe in NATS subjects, stream names and SQL identifiers.
func ValidName(s string) error {
	if !nameRe.MatchString(s) {
		return fmt.Errorf("%q is not a valid name: it must match %s", s, nameRe)
	}
	return nil
}
