package config

// validateSQL checks what the sqlite and mysql sources do not support:
// the cdc pattern (they have no change feed oneway reads) and a delete
// feed table (a soft-delete column works).
func (s *Source) validateSQL(c *checker) {
	if s.Capture.Pattern == PatternCDC {
		c.add("source.capture.pattern", "kind %q has no change feed: use %s, %s, %s or %s", s.Kind,
			PatternWatermark, PatternWatermarkCDC, PatternSynthetic, PatternWindow)
	}
	if s.Capture.DeleteFeed.Table != "" {
		c.add("source.capture.delete_feed.table", "not supported for kind %q yet: mark deleted rows with soft_delete_column, or use the synthetic or window pattern, which find deletes", s.Kind)
	}
}
