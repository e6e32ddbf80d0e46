package telemetry

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewLoggerFormat(t *testing.T) {
	tests := []struct {
		format   string
		wantJSON bool
		wantErr  bool
	}{
		{format: "json", wantJSON: true},
		{format: "JSON", wantJSON: true},
		{format: "text"},
		{format: "", wantJSON: true},     // a buffer is not a terminal
		{format: "auto", wantJSON: true}, // a buffer is not a terminal
		{format: "xml", wantErr: true},
	}
	for _, tt := range tests {
		t.Run("format="+tt.format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tt.format, "info", "reader")
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), tt.format) {
					t.Fatalf("NewLogger() error = %v, want one naming %q", err, tt.format)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewLogger() error = %v", err)
			}
			log.Info("event applied", slog.String("pipeline", "p1"))
			line := buf.String()
			if tt.wantJSON {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("output %q is not JSON: %v", line, err)
				}
				if rec["service"] != "reader" || rec["pipeline"] != "p1" || rec["msg"] != "event applied" {
					t.Errorf("record = %v, want service=reader pipeline=p1 msg=event applied", rec)
				}
				return
			}
			if strings.HasPrefix(line, "{") || !strings.Contains(line, "service=reader") ||
				!strings.Contains(line, `msg="event applied"`) {
				t.Errorf("output %q, want text with service=reader", line)
			}
		})
	}
}

func TestNewLoggerAutoOnFiles(t *testing.T) {
	regular, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0) // a char device
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()

	tests := []struct {
		name     string
		f        *os.File
		wantText bool
	}{
		{"regular file is JSON", regular, false},
		{"char device is text", devNull, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, err := NewLogger(tt.f, "auto", "info", "writer")
			if err != nil {
				t.Fatal(err)
			}
			_, isText := log.Handler().(*slog.TextHandler)
			if isText != tt.wantText {
				t.Errorf("handler %T, want text=%v", log.Handler(), tt.wantText)
			}
		})
	}
}

func TestNewLoggerLevel(t *testing.T) {
	tests := []struct {
		level     string
		wantLevel slog.Level
		wantErr   bool
	}{
		{level: "debug", wantLevel: slog.LevelDebug},
		{level: "info", wantLevel: slog.LevelInfo},
		{level: "", wantLevel: slog.LevelInfo},
		{level: "WARN", wantLevel: slog.LevelWarn},
		{level: "error", wantLevel: slog.LevelError},
		{level: "verbose", wantErr: true},
		{level: "warning", wantErr: true},
	}
	for _, tt := range tests {
		t.Run("level="+tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, "json", tt.level, "reader")
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), tt.level) {
					t.Fatalf("NewLogger() error = %v, want one naming %q", err, tt.level)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewLogger() error = %v", err)
			}
			for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
				buf.Reset()
				log.Log(t.Context(), l, "probe")
				if got, want := buf.Len() > 0, l >= tt.wantLevel; got != want {
					t.Errorf("level %v logged = %v, want %v", l, got, want)
				}
			}
		})
	}
}
