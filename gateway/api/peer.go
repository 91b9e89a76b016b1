package api

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// peerPoll is how often a request in flight checks that its client is
// still connected.
const peerPoll = 200 * time.Millisecond

// watchPeer cancels a request whose client has hung up, until c ends.
// fasthttp tells a handler nothing of a closed connection, and a
// non-streaming response writes nothing until it is done, so without this
// a client that gave up (a timeout, Ctrl-C) would keep its sequence
// generating and its KV blocks held to the end, as vLLM does not.
// Streams also notice on their next write; this is sooner.
func watchPeer(c context.Context, conn net.Conn, cancel context.CancelFunc) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	go func() {
		t := time.NewTicker(peerPoll)
		defer t.Stop()
		for {
			select {
			case <-c.Done():
				return
			case <-t.C:
				if peerClosed(rc) {
					cancel()
					return
				}
			}
		}
	}()
}

// peerClosed peeks at the socket without consuming or blocking: a read of
// 0 bytes is the client's FIN, a reset is a client gone; pending bytes (a
// pipelined request) or nothing yet mean it is still there.
func peerClosed(rc syscall.RawConn) bool {
	closed := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		closed = (n == 0 && err == nil) || errors.Is(err, unix.ECONNRESET)
	})
	return closed
}
