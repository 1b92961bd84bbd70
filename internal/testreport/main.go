// Command testreport reads the output of `go test -json` on standard input and prints what
// a person needs from a full test run: go test's own package lines (ok / FAIL / no test
// files), build errors, the complete output of every failed test, every skipped test with
// its reason, and a last line "N passed, N failed" (", N skipped" when some were).
//
// It exits 1 when any test failed, was skipped, never finished (a crash or timeout of its
// test binary), or a package failed (to build, or in its test binary); 0 otherwise. scripts/test.sh uses it so that
// a full run cannot pass by skipping tests silently.
//
// Usage: go test -json ./... 2>&1 | go run ./internal/testreport [-log FILE]
//
// Lines that are not JSON test events (go's own errors on stderr) are printed as they are.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (TestEvent) or of its build output (BuildEvent).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	FailedBuild string
	ImportPath  string // build events
}

type testID struct{ pkg, name string }

// report accumulates the run; it is used from one goroutine.
type report struct {
	out      io.Writer
	passed   int
	failed   []testID
	skipped  []testID
	reasons  map[testID]string // skip reasons
	buf      map[testID]*strings.Builder
	running  map[testID]bool
	badBuild []string
	badPkgs  []string // packages whose test binary failed
	logPath  string   // where the raw log is, named on failure
}

func newReport(out io.Writer) *report {
	return &report{
		out:     out,
		reasons: map[testID]string{},
		buf:     map[testID]*strings.Builder{},
		running: map[testID]bool{},
	}
}

func (r *report) line(text string) {
	if text == "" {
		return
	}
	fmt.Fprint(r.out, text)
	if !strings.HasSuffix(text, "\n") {
		fmt.Fprintln(r.out)
	}
}

// handle processes one input line.
func (r *report) handle(raw []byte) {
	var ev event
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &ev) != nil || ev.Action == "" {
		r.line(string(raw))
		return
	}
	switch ev.Action {
	case "build-output":
		r.line(ev.Output)
		return
	case "build-fail":
		r.badBuild = append(r.badBuild, ev.ImportPath)
		return
	}
	if ev.Test == "" {
		r.packageEvent(ev)
		return
	}
	id := testID{ev.Package, ev.Test}
	switch ev.Action {
	case "run":
		r.running[id] = true
	case "output":
		b := r.buf[id]
		if b == nil {
			b = &strings.Builder{}
			r.buf[id] = b
		}
		b.WriteString(ev.Output)
	case "pass":
		r.passed++
		r.done(id)
	case "fail":
		r.failed = append(r.failed, id)
		r.line(r.output(id))
		r.done(id)
	case "skip":
		r.skipped = append(r.skipped, id)
		r.reasons[id] = skipReason(r.output(id))
		r.line(r.output(id))
		r.done(id)
	}
}

func (r *report) output(id testID) string {
	if b := r.buf[id]; b != nil {
		return b.String()
	}
	return ""
}

func (r *report) done(id testID) {
	delete(r.buf, id)
	delete(r.running, id)
}

// packageEvent prints go test's own per-package text (ok/FAIL/? lines, crash output) and,
// when a package's run ends, turns its unfinished tests into failures.
func (r *report) packageEvent(ev event) {
	switch ev.Action {
	case "output":
		if ev.Output == "PASS\n" {
			return // go test without -v does not print it either
		}
		r.line(ev.Output)
	case "pass", "fail", "skip":
		if ev.Action == "fail" {
			r.badPkgs = append(r.badPkgs, ev.Package)
		}
		if ev.FailedBuild != "" && !contains(r.badBuild, ev.FailedBuild) {
			r.badBuild = append(r.badBuild, ev.FailedBuild)
		}
		var unfinished []testID
		for id := range r.running {
			if id.pkg == ev.Package {
				unfinished = append(unfinished, id)
			}
		}
		sortIDs(unfinished)
		for _, id := range unfinished {
			r.line(r.output(id))
			r.line(fmt.Sprintf("--- FAIL: %s (did not finish: its test binary stopped)", id.name))
			r.failed = append(r.failed, id)
			r.done(id)
		}
	}
}

// skipReason extracts the message of t.Skip from a skipped test's output.
func skipReason(out string) string {
	var msg []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		msg = append(msg, t)
	}
	return strings.Join(msg, " ")
}

// finish prints the closing summary and returns the exit code.
func (r *report) finish() int {
	// Tests still running when the input ended (go test itself was killed).
	var unfinished []testID
	for id := range r.running {
		unfinished = append(unfinished, id)
	}
	sortIDs(unfinished)
	for _, id := range unfinished {
		r.line(r.output(id))
		r.line(fmt.Sprintf("--- FAIL: %s (did not finish: the run ended)", id.name))
		r.failed = append(r.failed, id)
	}

	fmt.Fprintln(r.out)
	for _, p := range r.badBuild {
		fmt.Fprintf(r.out, "build failed: %s\n", p)
	}
	if len(r.badPkgs) > 0 {
		fmt.Fprintf(r.out, "failed packages: %s\n", strings.Join(r.badPkgs, " "))
	}
	if len(r.failed) > 0 {
		fmt.Fprintln(r.out, "failed tests:")
		for _, id := range r.failed {
			fmt.Fprintf(r.out, "  %s %s\n", id.pkg, id.name)
		}
	}
	if len(r.skipped) > 0 {
		fmt.Fprintln(r.out, "skipped tests (the full suite must run every test):")
		for _, id := range r.skipped {
			fmt.Fprintf(r.out, "  %s %s: %s\n", id.pkg, id.name, r.reasons[id])
		}
	}
	bad := len(r.failed) > 0 || len(r.skipped) > 0 || len(r.badBuild) > 0 || len(r.badPkgs) > 0
	if bad && r.logPath != "" {
		fmt.Fprintf(r.out, "raw go test -json log: %s\n", r.logPath)
	}
	summary := fmt.Sprintf("%d passed, %d failed", r.passed, len(r.failed))
	if len(r.skipped) > 0 {
		summary += fmt.Sprintf(", %d skipped", len(r.skipped))
	}
	fmt.Fprintln(r.out, summary)
	if bad {
		return 1
	}
	return 0
}

func sortIDs(ids []testID) {
	sort.Slice(ids, func(i, j int) bool {
		if ids[i].pkg != ids[j].pkg {
			return ids[i].pkg < ids[j].pkg
		}
		return ids[i].name < ids[j].name
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func run(in io.Reader, out io.Writer, logPath string) int {
	r := newReport(out)
	r.logPath = logPath
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64*1024), 64*1024*1024)
	for sc.Scan() {
		r.handle(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testreport: reading go test output: %v\n", err)
		r.finish()
		return 1
	}
	return r.finish()
}

func main() {
	logPath := flag.String("log", "", "path of the raw log, named in the output when the run fails")
	flag.Parse()
	os.Exit(run(os.Stdin, os.Stdout, *logPath))
}
