package election

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild()) // re-executed as a lone elector process (broker_test.go)
	}
	goleak.VerifyTestMain(m)
}
