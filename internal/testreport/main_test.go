package main

import (
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	ev := func(action, pkg, test, output string) string {
		return `{"Action":"` + action + `","Package":"` + pkg + `","Test":"` + test + `","Output":` + quote(output) + `}`
	}
	tests := []struct {
		name     string
		in       []string
		wantCode int
		want     []string // substrings of the output, in order
		notWant  []string
	}{
		{
			name: "all pass",
			in: []string{
				ev("start", "m/a", "", ""),
				ev("run", "m/a", "TestA", ""),
				ev("output", "m/a", "TestA", "=== RUN   TestA\n"),
				ev("output", "m/a", "TestA", "--- PASS: TestA (0.00s)\n"),
				ev("pass", "m/a", "TestA", ""),
				ev("run", "m/a", "TestB", ""),
				ev("run", "m/a", "TestB/sub", ""),
				ev("pass", "m/a", "TestB/sub", ""),
				ev("pass", "m/a", "TestB", ""),
				ev("output", "m/a", "", "PASS\n"),
				ev("output", "m/a", "", "ok  \tm/a\t0.01s\n"),
				ev("pass", "m/a", "", ""),
				ev("output", "m/b", "", "?   \tm/b\t[no test files]\n"),
				ev("skip", "m/b", "", ""),
			},
			wantCode: 0,
			want:     []string{"ok  \tm/a", "?   \tm/b", "3 passed, 0 failed\n"},
			notWant:  []string{"=== RUN", "skipped", "PASS\n", "raw go test", "failed tests", "failed packages"},
		},
		{
			name: "a failure prints the test's output",
			in: []string{
				ev("run", "m/a", "TestA", ""),
				ev("output", "m/a", "TestA", "    a_test.go:9: boom\n"),
				ev("output", "m/a", "TestA", "--- FAIL: TestA (0.00s)\n"),
				ev("fail", "m/a", "TestA", ""),
				ev("output", "m/a", "", "FAIL\tm/a\t0.01s\n"),
				ev("fail", "m/a", "", ""),
			},
			wantCode: 1,
			want:     []string{"a_test.go:9: boom", "FAIL\tm/a", "failed packages: m/a", "failed tests:", "m/a TestA", "raw go test -json log: /tmp/x.json", "0 passed, 1 failed\n"},
		},
		{
			name: "a skip fails the run and is named with its reason",
			in: []string{
				ev("run", "m/a", "TestA", ""),
				ev("pass", "m/a", "TestA", ""),
				ev("run", "m/a", "TestS", ""),
				ev("output", "m/a", "TestS", "=== RUN   TestS\n"),
				ev("output", "m/a", "TestS", "    s_test.go:5: needs RabbitMQ\n"),
				ev("output", "m/a", "TestS", "--- SKIP: TestS (0.00s)\n"),
				ev("skip", "m/a", "TestS", ""),
				ev("pass", "m/a", "", ""),
			},
			wantCode: 1,
			want:     []string{"skipped tests", "m/a TestS: s_test.go:5: needs RabbitMQ", "1 passed, 0 failed, 1 skipped\n"},
		},
		{
			name: "a test that never finishes is a failure",
			in: []string{
				ev("run", "m/a", "TestHang", ""),
				ev("output", "m/a", "TestHang", "=== RUN   TestHang\n"),
				ev("output", "m/a", "", "panic: test timed out after 1s\n"),
				ev("fail", "m/a", "", ""),
			},
			wantCode: 1,
			want:     []string{"panic: test timed out", "did not finish", "0 passed, 1 failed\n"},
		},
		{
			name: "a package failure without a failed test fails the run",
			in: []string{
				ev("run", "m/a", "TestA", ""),
				ev("pass", "m/a", "TestA", ""),
				ev("output", "m/a", "", "FAIL\tm/a\t0.01s\n"),
				ev("fail", "m/a", "", ""),
			},
			wantCode: 1,
			want:     []string{"failed packages: m/a", "1 passed, 0 failed\n"},
		},
		{
			name: "build failures and non-JSON lines are shown",
			in: []string{
				"go: something went wrong",
				`{"ImportPath":"m/c [m/c.test]","Action":"build-output","Output":"c.go:3:1: syntax error\n"}`,
				`{"ImportPath":"m/c [m/c.test]","Action":"build-fail"}`,
				`{"Action":"output","Package":"m/c","Output":"FAIL\tm/c [build failed]\n"}`,
				`{"Action":"fail","Package":"m/c","FailedBuild":"m/c [m/c.test]"}`,
			},
			wantCode: 1,
			want:     []string{"go: something went wrong", "c.go:3:1: syntax error", "FAIL\tm/c [build failed]", "build failed: m/c [m/c.test]", "0 passed, 0 failed\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			code := run(strings.NewReader(strings.Join(tt.in, "\n")+"\n"), &out, "/tmp/x.json")
			got := out.String()
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tt.wantCode, got)
			}
			rest := got
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Errorf("output lacks %q (in order); output:\n%s", w, got)
					break
				}
				rest = rest[i+len(w):]
			}
			for _, nw := range tt.notWant {
				if strings.Contains(got, nw) {
					t.Errorf("output has %q; output:\n%s", nw, got)
				}
			}
			if !strings.HasSuffix(got, "\n") {
				t.Errorf("output does not end with a newline: %q", got)
			}
		})
	}
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}
