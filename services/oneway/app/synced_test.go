package app

import "testing"

func TestCycleCountSince(t *testing.T) {
	tests := []struct {
		name   string
		before map[string]int // cycles before the mark
		after  map[string]int // cycles after it
		want   bool
	}{
		{"no read-backs", nil, nil, true},
		{"none since", map[string]int{"a": 3}, nil, false},
		{"one since: it may have begun before the mark", map[string]int{"a": 3}, map[string]int{"a": 1}, false},
		{"two since", map[string]int{"a": 3}, map[string]int{"a": 2}, true},
		{"one target behind", map[string]int{"a": 1, "b": 1}, map[string]int{"a": 5, "b": 1}, false},
		{"every target through", map[string]int{"a": 1}, map[string]int{"a": 2, "b": 2}, true},
		{"never cycled", map[string]int{}, map[string]int{"a": 2, "b": 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCycleCount()
			for _, m := range []map[string]int{tt.before, tt.after} {
				for target := range m {
					c.watch(target)
				}
			}
			for target, n := range tt.before {
				for range n {
					c.add(target)
				}
			}
			mark := c.snapshot()
			for target, n := range tt.after {
				for range n {
					c.add(target)
				}
			}
			if got := c.since(mark, 2); got != tt.want {
				t.Fatalf("since(mark, 2) = %v, want %v", got, tt.want)
			}
		})
	}
}
