package rpc

import (
	"crypto/rand"

	"github.com/google/uuid"
)

// newID returns a random (version 4) UUID in its canonical string form, like
// uuid.NewString, with one allocation instead of two: the 16 random bytes stay on the
// stack.
func newID() string {
	var u uuid.UUID
	_, _ = rand.Read(u[:])  // crypto/rand.Read never fails (it crashes the program instead)
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // variant RFC 4122
	return u.String()
}
