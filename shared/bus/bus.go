// Package bus names what oneway services exchange on NATS JetStream:
// subjects, streams, durable consumers, state buckets and message headers.
// Every service derives names here, so they cannot drift apart.
package bus

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// Subjects of one pipeline. All live in the pipeline's stream.
func SourceSubject(pipeline string) string { return "oneway." + pipeline + ".source" }

// DLQSubject is where a target's dead letters go.
func DLQSubject(pipeline, target string) string { return "oneway." + pipeline + ".dlq." + target }

// DLQSubjects matches the dead letters of every target of a pipeline.
func DLQSubjects(pipeline string) string { return "oneway." + pipeline + ".dlq.*" }

// RetrySubject is where `oneway dlq retry` re-drives a target's dead letters.
// Only that target's writers consume it; a message on it carries the
// original sequence (HeaderSequence), so it is applied with its original
// version.
func RetrySubject(pipeline, target string) string {
	return "oneway." + pipeline + ".retry." + target
}

// AppliedSubject is where a writer in staged mode reports what it applied
// (a Batch with origin "applied.<target>"; each change's version is the
// push version it was applied at, its row the state the target stored).
func AppliedSubject(pipeline, target string) string {
	return "oneway." + pipeline + ".applied." + target
}

// AppliedSubjects matches the applied reports of every target.
func AppliedSubjects(pipeline string) string { return "oneway." + pipeline + ".applied.*" }

// TargetSubject is where a target's read-back publishes what it finds in
// the target (a Batch with origin "target.<target>", as a reader publishes
// a source's changes).
func TargetSubject(pipeline, target string) string {
	return "oneway." + pipeline + ".target." + target
}

// TargetSubjects matches the read-backs of every target.
func TargetSubjects(pipeline string) string { return "oneway." + pipeline + ".target.*" }

// StagedSubject is where the stager names the keys it staged (a
// onewayv1.Staged message), for the differ.
func StagedSubject(pipeline string) string { return "oneway." + pipeline + ".staged" }

// PushSubject is where the differ publishes what a target needs (a Batch
// with origin "differ"); in staged mode the target's writers consume it
// instead of the source subject.
func PushSubject(pipeline, target string) string {
	return "oneway." + pipeline + ".push." + target
}

// StagerDLQSubject is where the stager dead-letters a message it cannot
// stage. "_stager" is no valid target name, so it never collides with a
// target's dead letters.
func StagerDLQSubject(pipeline string) string { return "oneway." + pipeline + ".dlq._stager" }

// DifferDLQSubject is where the differ dead-letters a staged message it
// cannot read.
func DifferDLQSubject(pipeline string) string { return "oneway." + pipeline + ".dlq._differ" }

// StreamSubjects is the subject filter of a pipeline's stream.
func StreamSubjects(pipeline string) []string { return []string{"oneway." + pipeline + ".>"} }

// StreamName is the name of a pipeline's stream: ONEWAY_<PIPELINE>.
func StreamName(pipeline string) string { return "ONEWAY_" + strings.ToUpper(pipeline) }

// WriterConsumer is the durable consumer that the writers of one target share.
func WriterConsumer(pipeline, target string) string { return "writer-" + pipeline + "-" + target }

// StagerConsumer is the durable consumer the stagers of a pipeline share.
func StagerConsumer(pipeline string) string { return "stager-" + pipeline }

// DifferConsumer is the durable consumer of a pipeline's differ.
func DifferConsumer(pipeline string) string { return "differ-" + pipeline }

// StateBucket is the KV bucket holding reader positions and leases.
const StateBucket = "ONEWAY_STATE"

// ReaderPositionKey is the state key of a reader's position.
func ReaderPositionKey(pipeline, side string) string {
	return pipeline + ".reader." + side + ".position"
}

// CaptureBucket is the Object Store bucket holding the capture state that
// does not fit a KV value: the per-key hash lists of the synthetic and
// window patterns, the overlap hashes of watermark_cdc.
const CaptureBucket = "ONEWAY_CAPTURE"

// CaptureObject is the name of one piece of a reader's capture state
// ("hashes", "overlap") in CaptureBucket.
func CaptureObject(pipeline, side, name string) string {
	return pipeline + ".reader." + side + "." + name
}

// CaptureObjects lists the names of every capture state object of a
// pipeline side.
func CaptureObjects(pipeline, side string) []string {
	return []string{CaptureObject(pipeline, side, "hashes"), CaptureObject(pipeline, side, "overlap")}
}

// StageColumnsKey is the state key holding the owned columns (names,
// types, key flags) of the rows the stager stages, in stage order: the
// differ builds its pushes with them.
func StageColumnsKey(pipeline string) string { return pipeline + ".stage.columns" }

// BreakerKey is the state key of the deletes the differ pushed to a target
// in the mass-delete breaker's current window.
func BreakerKey(pipeline, target string) string { return pipeline + ".differ." + target + ".deletes" }

// ReaderLeaseKey is the state key of the lease that makes one reader of a
// pipeline side active.
func ReaderLeaseKey(pipeline, side string) string { return pipeline + ".reader." + side + ".lease" }

// Headers set on dead letters and used by tools that read them.
const (
	HeaderError    = "Oneway-Error"
	HeaderPipeline = "Oneway-Pipeline"
	HeaderTarget   = "Oneway-Target"
	HeaderKey      = "Oneway-Key"
	HeaderAttempts = "Oneway-Attempts"
	HeaderSubject  = "Oneway-Original-Subject"
	HeaderSequence = "Oneway-Original-Sequence"
	// HeaderRetryOf names the dead letter (its DLQ stream sequence) that a
	// message on a retry subject re-drives.
	HeaderRetryOf = "Oneway-Retry-Of"
	// HeaderAsPushed ("true") marks an applied report whose every change
	// left the target exactly as pushed: the stager stages it but need not
	// hand its keys to the differ, which decided that state already.
	HeaderAsPushed = "Oneway-As-Pushed"
)

// IdempotencyKey is the idempotency key of one change of a target: the
// first 32 hex digits of sha256(pipeline NUL target NUL key NUL version).
// The same change gets the same key on every delivery and from every
// writer; sinks carry it (NATS Nats-Msg-Id, HTTP Idempotency-Key), and
// `oneway verify` uses it to tell a target's messages from others on a
// shared subject.
func IdempotencyKey(pipeline, target, key string, version int64) string {
	h := sha256.Sum256([]byte(pipeline + "\x00" + target + "\x00" + key + "\x00" + strconv.FormatInt(version, 10)))
	return hex.EncodeToString(h[:])[:32]
}
