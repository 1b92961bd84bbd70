package latest

import "testing"

func TestSetKeepsOnlyTheNewest(t *testing.T) {
	v := New[int]()
	select {
	case got := <-v.C():
		t.Fatalf("empty value delivered %d", got)
	default:
	}
	for i := 1; i <= 3; i++ {
		v.Set(i) // must not block although nobody reads
	}
	if got := <-v.C(); got != 3 {
		t.Fatalf("got %d, want the newest value 3", got)
	}
	select {
	case got := <-v.C():
		t.Fatalf("older value %d delivered after the newest", got)
	default:
	}
}
