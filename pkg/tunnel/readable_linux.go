package tunnel

import "syscall"

// peek reports whether a read of fd would not block: a byte, the end of
// the stream, or an error is there.
func peek(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}
