//go:build !linux

package tunnel

// peek cannot tell without a buffer here: report ready, so the caller reads.
func peek(uintptr) bool { return true }
