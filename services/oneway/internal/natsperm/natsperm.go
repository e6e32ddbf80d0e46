// Package natsperm writes the least-privilege NATS users of a pipeline
// file: one user per service, each allowed only the subjects and JetStream
// API calls that service makes, as a NATS server config `authorization`
// block. Every name comes from package bus, as the services derive theirs,
// so the grants cannot drift from what the services do.
// deploy/nats/permissions.conf is its output for
// deploy/examples/invoices-staged.yaml (TestShippedFile keeps them equal),
// and TestNATSPermissions runs pipelines under it.
package natsperm

import (
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
)

// Pipeline is what the grants depend on: the pipeline's name and its
// targets' names.
type Pipeline struct {
	Name    string
	Targets []string
}

// FromConfigs is what the grants of loaded pipeline configs depend on.
func FromConfigs(cfgs []*config.Pipeline) []Pipeline {
	ps := make([]Pipeline, len(cfgs))
	for i, c := range cfgs {
		ps[i].Name = c.Pipeline
		for _, t := range c.Targets {
			ps[i].Targets = append(ps[i].Targets, t.Name)
		}
	}
	return ps
}

// Options shape the output.
type Options struct {
	// File names the pipeline file in the header ("" leaves it out).
	File string
	// UserPrefix is put before each user's name, its password's variable
	// and its inbox prefix ("" gives reader, writer, …): for a server whose
	// users serve several pipeline files.
	UserPrefix string
}

var prefixRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// Users are the users Write grants, in order.
var Users = []string{"reader", "writer", "stager", "differ", "status", "operator"}

// Write writes the authorization block for ps to w. It fails only on a
// bad prefix, an empty ps or a write error.
func Write(w io.Writer, ps []Pipeline, o Options) error {
	if o.UserPrefix != "" && !prefixRe.MatchString(o.UserPrefix) {
		return fmt.Errorf("user prefix %q: it must match %s", o.UserPrefix, prefixRe)
	}
	if len(ps) == 0 {
		return fmt.Errorf("no pipeline to grant")
	}
	var b strings.Builder
	header(&b, ps, o)
	b.WriteString("authorization {\n")
	for _, u := range users(ps) {
		block(&b, u, o)
	}
	b.WriteString("  users = [\n")
	width, pwWidth := 0, 0
	for _, u := range Users {
		width = max(width, len(o.UserPrefix+u))
		pwWidth = max(pwWidth, len(PasswordVar(o.UserPrefix, u)))
	}
	for _, u := range Users {
		name := o.UserPrefix + u
		fmt.Fprintf(&b, "    { user: %-*s password: %-*s permissions: $%s }\n",
			width+1, name+",", pwWidth+2, "$"+PasswordVar(o.UserPrefix, u)+",", strings.ToUpper(name))
	}
	b.WriteString("  ]\n}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// PasswordVar is the server environment variable holding user's password.
func PasswordVar(prefix, user string) string {
	return "ONEWAY_NATS_" + strings.ToUpper(prefix+user) + "_PASSWORD"
}

// InboxPrefix is the inbox prefix a user must set (nats.inbox_prefix): the
// only subjects it may subscribe to.
func InboxPrefix(prefix, user string) string { return "_INBOX_" + prefix + user }

func header(b *strings.Builder, ps []Pipeline, o Options) {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = describe(p)
	}
	for _, l := range []string{
		"Least-privilege NATS users for oneway: one user per service, each",
		"allowed only the subjects and JetStream API calls that service makes.",
		"",
		"Written by",
		"",
		"  oneway permissions" + fileFlag(o),
		"",
		wrap("for " + strings.Join(names, "; ") +
			". For another pipeline file (other names, more targets or tables), run it again on that file rather than editing this one by hand."),
		"",
		"Include it from a server config (include paths are relative to that file),",
		"as deploy/nats/server.conf (the compose stack) and cluster-auth.conf",
		"(deploy/k8s) do:",
		"",
		"  include ./permissions.conf",
		"",
		"and give each service its user in the pipeline file:",
		"",
		"  nats:",
		"    user: " + o.UserPrefix + "reader" + strings.Repeat(" ", max(1, 28-len(o.UserPrefix+"reader"))) + "# or writer, stager, differ, status, operator",
		"    password: ${ONEWAY_NATS_PASSWORD}",
		"    inbox_prefix: " + InboxPrefix(o.UserPrefix, "reader") + strings.Repeat(" ", max(1, 20-len(InboxPrefix(o.UserPrefix, "reader")))) + "# _INBOX_<user>: replies to this user only",
		"",
		"The passwords come from the server's environment (" + PasswordVar(o.UserPrefix, "*") + ");",
		"a bcrypt hash (`nats server passwd`) may stand in for each. NKeys or a",
		"decentralised JWT account take the same `permissions` blocks. A server",
		"has one authorization block: for the pipelines of several files, write",
		"each file's users with its own --user-prefix and merge the blocks.",
		"",
		"The KV bucket " + bus.StateBucket + " and the object store " + bus.CaptureBucket + " are shared",
		"by every pipeline of a server; KV keys start with the pipeline's name, so",
		"the KV grants are per pipeline, the object store's (whose chunks are named",
		"by random ids) are not.",
		"",
		"Every service needs: replies to its own requests (on its own inbox prefix,",
		"so that no user can subscribe to another's replies, which carry the",
		"pipeline's rows: a writer's fetched messages, the reader's KV reads), the",
		"pipeline's stream (every service ensures it at start: INFO, then CREATE or",
		"UPDATE when missing or different), and its durable consumer (CREATE with",
		"its filter, MSG.NEXT to fetch, $JS.ACK.<stream>.<consumer>.> to ack, nak",
		"and report progress; INFO when a fetch fails, to tell a consumer that is",
		"gone, and must be created again, from a passing fault).",
	} {
		if l == "" {
			b.WriteString("#\n")
			continue
		}
		for _, l := range strings.Split(l, "\n") {
			b.WriteString("# " + l + "\n")
		}
	}
	b.WriteString("\n")
}

// wrap breaks s into lines of at most 74 characters at spaces (a longer
// word stays whole).
func wrap(s string) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > 74 {
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return strings.Join(append(lines, line), "\n")
}

func fileFlag(o Options) string {
	s := ""
	if o.File != "" {
		s += " --config " + o.File
	}
	if o.UserPrefix != "" {
		s += " --user-prefix " + o.UserPrefix
	}
	return s
}

func describe(p Pipeline) string {
	s := "the pipeline `" + p.Name + "` (stream " + bus.StreamName(p.Name) + ", subjects " + bus.StreamSubjects(p.Name)[0] + ")"
	switch len(p.Targets) {
	case 0:
		return s + " with no target"
	case 1:
		return s + " with the target `" + p.Targets[0] + "`"
	}
	return s + " with the targets `" + strings.Join(p.Targets, "`, `") + "`"
}

// user is one user's grants.
type user struct {
	name    string
	comment []string
	publish []string
}

// grants collects subjects in order, each once.
type grants struct {
	list []string
	seen map[string]bool
}

func (g *grants) add(subjects ...string) {
	if g.seen == nil {
		g.seen = map[string]bool{}
	}
	for _, s := range subjects {
		if !g.seen[s] {
			g.seen[s] = true
			g.list = append(g.list, s)
		}
	}
}

const api = "$JS.API."

// stream is what every service does to the pipeline's stream at start.
func stream(p string) []string {
	s := bus.StreamName(p)
	return []string{api + "STREAM.INFO." + s, api + "STREAM.CREATE." + s, api + "STREAM.UPDATE." + s}
}

// durable is what a service does to its durable consumer d.
func durable(p, d string) []string {
	s := bus.StreamName(p)
	return []string{
		api + "CONSUMER.CREATE." + s + "." + d,
		api + "CONSUMER.CREATE." + s + "." + d + ".>",
		api + "CONSUMER.MSG.NEXT." + s + "." + d,
		api + "CONSUMER.INFO." + s + "." + d,
		"$JS.ACK." + s + "." + d + ".>",
	}
}

// kv is a service's use of the pipeline's keys in the state bucket.
func kv(p string) []string {
	k := "KV_" + bus.StateBucket
	return []string{
		api + "STREAM.INFO." + k, api + "STREAM.CREATE." + k, api + "STREAM.UPDATE." + k,
		api + "DIRECT.GET." + k + ".$KV." + bus.StateBucket + "." + p + ".>",
		"$KV." + bus.StateBucket + "." + p + ".>",
	}
}

// capture is the use of the capture object store: put (chunks, then the
// metadata), get (an ordered push consumer, or a pull one for a download
// to a file), purge of a replaced object's chunks.
func capture() []string {
	o := "OBJ_" + bus.CaptureBucket
	return []string{
		api + "STREAM.INFO." + o, api + "STREAM.CREATE." + o, api + "STREAM.UPDATE." + o,
		api + "STREAM.MSG.GET." + o,
		api + "DIRECT.GET." + o + ".>",
		api + "STREAM.PURGE." + o,
		api + "CONSUMER.CREATE." + o + ".>",
		api + "CONSUMER.MSG.NEXT." + o + ".>",
		api + "CONSUMER.DELETE." + o + ".>",
		"$JS.FC." + o + ".>",
		"$O." + bus.CaptureBucket + ".>",
	}
}

func users(ps []Pipeline) []user {
	var reader, writer, stager, differ, status, operator grants
	for _, g := range []*grants{&reader, &writer, &stager, &differ, &status, &operator} {
		g.add(api + "INFO")
	}
	for _, pl := range ps {
		p, s := pl.Name, bus.StreamName(pl.Name)
		reader.add(bus.SourceSubject(p), bus.TargetSubjects(p))
		reader.add(stream(p)...)
		reader.add(api+"STREAM.MSG.GET."+s, api+"STREAM.PURGE."+s)
		reader.add(kv(p)...)

		writer.add(stream(p)...)
		for _, t := range pl.Targets {
			writer.add(bus.DLQSubject(p, t), bus.AppliedSubject(p, t))
			writer.add(durable(p, bus.WriterConsumer(p, t))...)
		}

		stager.add(bus.StagedSubject(p), bus.StagerDLQSubject(p))
		stager.add(stream(p)...)
		stager.add(durable(p, bus.StagerConsumer(p))...)
		stager.add(kv(p)...)

		differ.add(bus.PushSubject(p, "*"), bus.DLQSubjects(p))
		differ.add(stream(p)...)
		differ.add(durable(p, bus.DifferConsumer(p))...)
		differ.add(kv(p)...)

		status.add(api+"STREAM.INFO."+s, api+"CONSUMER.INFO."+s+".*")
		status.add(api+"STREAM.INFO.KV_"+bus.StateBucket, api+"DIRECT.GET.KV_"+bus.StateBucket+".$KV."+bus.StateBucket+"."+p+".>")

		operator.add(bus.StreamSubjects(p)...)
		operator.add(api+"STREAM.*."+s, api+"STREAM.MSG.*."+s,
			api+"DIRECT.GET."+s, api+"DIRECT.GET."+s+".>",
			api+"CONSUMER.*."+s, api+"CONSUMER.*."+s+".>", api+"CONSUMER.MSG.NEXT."+s+".>",
			"$JS.ACK."+s+".>", "$JS.FC."+s+".>")
		operator.add(kv(p)...)
	}
	reader.add(capture()...)
	operator.add(capture()...)
	return []user{
		{name: "reader", publish: reader.list, comment: []string{
			"The reader: publishes the source's changes (and a target's read-back),",
			"keeps its position and lease in KV, and the capture state of the",
			"synthetic, window and watermark_cdc patterns in the object store (a",
			"restarted reader downloads its last list with a pull consumer); a",
			"read-back reads the writers' applied reports (STREAM.MSG.GET). After",
			"the stream was deleted and created again, the reader moves the empty",
			"stream's sequence above every version published before (PURGE up to a",
			"sequence; it never purges a stream that holds messages). A reader can",
			"already make the targets lose rows by publishing deletes, so PURGE",
			"grants it no new harm.",
		}},
		{name: "writer", publish: writer.list, comment: []string{
			"The writers of every target: consume the source (direct) or the",
			"differ's pushes and dead-letter re-drives (staged), report what they",
			"applied (staged) and dead-letter what the target rejects.",
		}},
		{name: "stager", publish: stager.list, comment: []string{
			"The stagers: consume the source, the read-backs and the writers'",
			"reports, name the staged keys for the differ, keep the stage's columns",
			"in KV.",
		}},
		{name: "differ", publish: differ.list, comment: []string{
			"The differ: consumes the staged keys, pushes to every target, keeps",
			"the mass-delete breaker in KV, dead-letters what it cannot read.",
		}},
		{name: "status", publish: status.list, comment: []string{
			"`oneway status --serve` (the status page of services run apart): reads",
			"the stream, the writers' consumers and the reader's state; changes",
			"nothing.",
		}},
		{name: "operator", publish: operator.list, comment: []string{
			"An operator's `oneway` commands that change the pipeline's NATS state",
			"(dlq retry and drop, replay, resync, diff --scan, approve): everything",
			"of the pipeline's stream, its KV keys and the capture store, nothing",
			"of other pipelines or other streams.",
		}},
	}
}

func block(b *strings.Builder, u user, o Options) {
	for _, l := range u.comment {
		b.WriteString("  # " + l + "\n")
	}
	fmt.Fprintf(b, "  %s = {\n    publish = {\n      allow = [\n", strings.ToUpper(o.UserPrefix+u.name))
	for _, s := range u.publish {
		fmt.Fprintf(b, "        %q\n", s)
	}
	fmt.Fprintf(b, "      ]\n    }\n    subscribe = { allow = [%q] }\n  }\n\n", InboxPrefix(o.UserPrefix, u.name)+".>")
}
