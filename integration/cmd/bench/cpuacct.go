package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// CPU accounting: which process used how much CPU during a timed run.
// On a two-core machine shared by the source, the target, the walsender
// and the pipeline, latency and throughput follow from the CPU each part
// needs, so the bench reports it beside the seconds.

// clockTicks is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTicks = 100

// cpuSample is the CPU time of every process at one moment, and the
// machine's busy and stolen time.
type cpuSample struct {
	procs map[int]procCPU
	busy  float64 // seconds all CPUs spent not idle (steal excluded)
	steal float64 // seconds the hypervisor ran something else
}

type procCPU struct {
	cmdline string
	sec     float64 // user + system
}

// sampleCPU reads /proc. A process that cannot be read (it ended) is left
// out; on a system without /proc the sample is empty.
func sampleCPU() cpuSample {
	s := cpuSample{procs: map[int]procCPU{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		s.busy, s.steal = parseProcStat(b)
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		sec, ok := parsePidStat(stat)
		if !ok {
			continue
		}
		cmd, _ := os.ReadFile(d + "/cmdline")
		s.procs[pid] = procCPU{cmdline: strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))), sec: sec}
	}
	return s
}

// parseProcStat returns the busy and steal seconds of /proc/stat's "cpu"
// line (user nice system idle iowait irq softirq steal …).
func parseProcStat(b []byte) (busy, steal float64) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	var v [8]float64
	for i := range v {
		v[i], _ = strconv.ParseFloat(f[1+i], 64)
	}
	busy = v[0] + v[1] + v[2] + v[5] + v[6]
	return busy / clockTicks, v[7] / clockTicks
}

// parsePidStat returns utime + stime of a /proc/<pid>/stat (fields 14 and
// 15; the command name in parentheses may hold spaces).
func parsePidStat(b []byte) (float64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return (u + s) / clockTicks, true
}

// cpuUse is what happened between two samples: CPU seconds by role (role
// names each process; "" leaves it out), the machine's busy and stolen
// seconds.
type cpuUse struct {
	ByRole map[string]float64 `json:"by_role"`
	Busy   float64            `json:"busy"`
	Steal  float64            `json:"steal"`
}

func (a cpuSample) until(b cpuSample, role func(pid int, cmdline string) string) cpuUse {
	u := cpuUse{ByRole: map[string]float64{}, Busy: b.busy - a.busy, Steal: b.steal - a.steal}
	for pid, p := range b.procs {
		before := a.procs[pid]
		if before.cmdline != p.cmdline && before.sec > p.sec {
			before = procCPU{} // the pid was reused
		}
		d := p.sec - before.sec
		if d <= 0 {
			continue
		}
		if r := role(pid, p.cmdline); r != "" {
			u.ByRole[r] += d
		}
	}
	return u
}

// String is "oneway 2.10, walsender 2.21, …; machine busy 7.9 s, steal 0.0 s",
// roles by decreasing CPU.
func (u cpuUse) String() string {
	roles := make([]string, 0, len(u.ByRole))
	for r := range u.ByRole {
		roles = append(roles, r)
	}
	sort.Slice(roles, func(i, j int) bool { return u.ByRole[roles[i]] > u.ByRole[roles[j]] })
	parts := make([]string, len(roles))
	for i, r := range roles {
		parts[i] = fmt.Sprintf("%s %.2f", r, u.ByRole[r])
	}
	return fmt.Sprintf("CPU s: %s; machine busy %.1f s, steal %.1f s", strings.Join(parts, ", "), u.Busy, u.Steal)
}

// medianUse is, role by role, the median of uses (and of busy and steal).
func medianUse(uses []cpuUse) cpuUse {
	m := cpuUse{ByRole: map[string]float64{}}
	roles := map[string]bool{}
	var busy, steal []float64
	for _, u := range uses {
		for r := range u.ByRole {
			roles[r] = true
		}
		busy, steal = append(busy, u.Busy), append(steal, u.Steal)
	}
	for r := range roles {
		var v []float64
		for _, u := range uses {
			v = append(v, u.ByRole[r])
		}
		m.ByRole[r] = round(median(v))
	}
	if len(uses) > 0 {
		m.Busy, m.Steal = round(median(busy)), round(median(steal))
	}
	return m
}

// pgRoles names PostgreSQL processes by their title: the walsender, the
// subscription's workers, a session of one of dbs (by database name, as
// the role dbs gives it), the server's own processes; every other process
// is "other" except the bench itself, which is left out. oneway is the pid
// of the oneway process under test (0: none).
func pgRoles(oneway int, dbs map[string]string) func(pid int, cmdline string) string {
	self := os.Getpid()
	return func(pid int, cmd string) string {
		switch {
		case pid == self:
			return ""
		case oneway != 0 && pid == oneway:
			return "oneway"
		case !strings.HasPrefix(cmd, "postgres:"):
			return "other"
		case strings.Contains(cmd, "walsender"):
			return "walsender"
		case strings.Contains(cmd, "logical replication"):
			return "subscription worker"
		}
		f := strings.Fields(cmd)
		// "postgres: 15/main: <user> <database> <host(port)> <state>"
		if len(f) >= 4 {
			if r, ok := dbs[f[3]]; ok {
				return r
			}
		}
		return "postgres (other)"
	}
}

// mergeSamples is b, plus the processes of a that b no longer finds (they
// ended between the samples: their last known time stands).
func mergeSamples(a, b cpuSample) cpuSample {
	for pid, p := range a.procs {
		if _, ok := b.procs[pid]; !ok {
			b.procs[pid] = p
		}
	}
	return b
}
