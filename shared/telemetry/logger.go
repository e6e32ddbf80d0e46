package telemetry

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Log formats accepted by NewLogger.
const (
	FormatJSON = "json"
	FormatText = "text"
	FormatAuto = "auto"
)

// NewLogger returns a slog logger: JSON when format=="json", text when
// "text", and for "" or "auto": text when w is a terminal (an *os.File whose
// mode is a char device), else JSON. The level is one of
// debug|info|warn|error (case-insensitive; "" means info). The returned logger
// has the attribute service=<service>; callers add pipeline with With.
func NewLogger(w io.Writer, format, level, service string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(strings.TrimSpace(format)) {
	case FormatJSON:
		h = slog.NewJSONHandler(w, opts)
	case FormatText:
		h = slog.NewTextHandler(w, opts)
	case "", FormatAuto:
		if isTerminal(w) {
			h = slog.NewTextHandler(w, opts)
		} else {
			h = slog.NewJSONHandler(w, opts)
		}
	default:
		return nil, fmt.Errorf("telemetry: unknown log format %q (want json, text or auto)", format)
	}
	return slog.New(h).With(slog.String("service", service)), nil
}

// ParseLevel maps debug|info|warn|error (case-insensitive; "" means info) to
// a slog.Level.
func ParseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	default:
		return 0, fmt.Errorf("telemetry: unknown log level %q (want debug, info, warn or error)", level)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	return fi.Mode()&os.ModeCharDevice != 0
}
