package config

import "testing"

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"orders", true}, {"a", true}, {"crm_2", true}, {"a234567890123456789012345678901234567890", true},
		{"", false}, {"Orders", false}, {"2crm", false}, {"_crm", false}, {"crm-2", false}, {"a.b", false},
		{"a2345678901234567890123456789012345678901", false},
	} {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
