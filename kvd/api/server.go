// Package api serves kvd's control protocol (package ipc) on a unix socket,
// driving an engine.Engine. One goroutine per connection; the engine
// serialises the work.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/observability"
)

// ErrRunning means another kvd already serves the socket.
var ErrRunning = errors.New("kvd is already running")

// Listen creates the socket at path: its directory is made 0700 if missing,
// a stale socket file (nobody answers) is removed, and the socket is 0600.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", path, ErrRunning)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%s exists and is not a socket kvd can replace: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	return ln, os.Chmod(path, 0o600)
}

// Server answers requests on accepted connections.
type Server struct {
	e     *engine.Engine
	log   *slog.Logger
	grace time.Duration
	wg    sync.WaitGroup

	nextConn atomic.Uint64
}

// New returns a server for e; grace is how often dropped leases are reaped.
func New(e *engine.Engine, log *slog.Logger, grace time.Duration) *Server {
	return &Server{e: e, log: log, grace: grace}
}

// Serve accepts connections until ctx ends, then closes ln and waits for
// connections to finish.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go s.reap(ctx)
	var conns sync.Map
	defer func() {
		conns.Range(func(k, _ any) bool { k.(*net.UnixConn).Close(); return true })
		s.wg.Wait()
	}()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		conns.Store(c, nil)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer conns.Delete(c)
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) reap(ctx context.Context) {
	every := max(s.grace/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := s.e.Reap(); n > 0 {
				s.log.Info("freed sequences of dropped clients", "leases", n)
			}
		}
	}
}

// conn is one client connection's state.
type conn struct {
	c       *net.UnixConn
	id      uint64 // tells this connection's lease apart from a newer one's
	lease   string
	out     []byte // reply frames
	payload []byte // reply payloads, kept apart from out
}

func (s *Server) serveConn(ctx context.Context, uc *net.UnixConn) {
	c := &conn{c: uc, id: s.nextConn.Add(1)}
	defer func() {
		uc.Close()
		if c.lease != "" {
			s.e.Disconnect(c.lease, c.id)
			s.log.Info("client disconnected", "lease", c.lease[:8])
		}
	}()
	var buf []byte
	for {
		f, nb, err := ipc.ReadFrame(uc, buf)
		buf = nb
		if err != nil {
			if errors.Is(err, ipc.ErrBadRequest) {
				// The stream cannot be resynchronised: say why, then hang up.
				s.log.Warn("bad frame", "err", err)
				c.reply(&ipc.Frame{Type: ipc.TypeError}, ipc.EncodeError(nil, err), -1)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Info("connection ended", "err", err)
			}
			return
		}
		if err := s.handle(ctx, c, f); err != nil {
			s.log.Info("connection ended", "err", err)
			return
		}
	}
}

// handle answers one frame; an error ends the connection (a write failed).
func (s *Server) handle(ctx context.Context, c *conn, f *ipc.Frame) error {
	if f.Version != ipc.Version {
		err := fmt.Errorf("%w: client speaks version %d, kvd speaks %d", ipc.ErrVersionMismatch, f.Version, ipc.Version)
		return c.replyErr(f, err)
	}
	ctx = observability.Extract(ctx, f.TraceParent)
	if f.Type == ipc.TypeStepNotify {
		// No reply, not even an error: the client reads none.
		var req ipc.StepDone
		err := req.Decode(f.Payload)
		if err == nil && c.lease == "" {
			err = fmt.Errorf("%w: send hello first", ipc.ErrBadRequest)
		}
		if err == nil {
			err = s.e.StepDone(ctx, c.session(), req.ID, req.Failed)
		}
		if err != nil {
			s.log.Warn("step done notice", "err", err)
		}
		return nil
	}
	payload, fd, err := s.dispatch(ctx, c, f)
	if err != nil {
		return c.replyErr(f, err)
	}
	return c.reply(f, payload, fd)
}

func (s *Server) dispatch(ctx context.Context, c *conn, f *ipc.Frame) ([]byte, int, error) {
	if f.Type != ipc.TypeHello && f.Type != ipc.TypeStatus && c.lease == "" {
		return nil, -1, fmt.Errorf("%w: send hello first", ipc.ErrBadRequest)
	}
	switch f.Type {
	case ipc.TypeHello:
		if c.lease != "" {
			return nil, -1, fmt.Errorf("%w: this connection already said hello", ipc.ErrBadRequest)
		}
		var req ipc.HelloRequest
		if err := json.Unmarshal(f.Payload, &req); err != nil {
			return nil, -1, fmt.Errorf("%w: hello: %v", ipc.ErrBadRequest, err)
		}
		rep, err := s.e.Hello(ctx, req, c.id)
		if err != nil {
			return nil, -1, err
		}
		c.lease = rep.Lease
		s.log.Info("client connected", "name", req.Name, "lease", rep.Lease[:8], "reclaimed", len(rep.Reclaimed))
		b, err := json.Marshal(rep)
		return b, s.e.Pool().FD(), err
	case ipc.TypeOpen, ipc.TypeClose:
		ids, err := ipc.DecodeSeqs(f.Payload)
		if err != nil {
			return nil, -1, err
		}
		if f.Type == ipc.TypeOpen {
			return nil, -1, s.e.Open(ctx, c.session(), ids)
		}
		return nil, -1, s.e.Close(ctx, c.session(), ids)
	case ipc.TypeStep:
		var req ipc.StepRequest
		if err := req.Decode(f.Payload); err != nil {
			return nil, -1, err
		}
		rep, err := s.e.Step(ctx, c.session(), &req)
		if err != nil {
			return nil, -1, err
		}
		c.payload = rep.Encode(c.payload[:0])
		return c.payload, -1, nil
	case ipc.TypeStepDone:
		var req ipc.StepDone
		if err := req.Decode(f.Payload); err != nil {
			return nil, -1, err
		}
		return nil, -1, s.e.StepDone(ctx, c.session(), req.ID, req.Failed)
	case ipc.TypeStatus:
		b, err := json.Marshal(s.e.Status(ctx))
		return b, -1, err
	}
	return nil, -1, fmt.Errorf("%w: unknown message type %d", ipc.ErrBadRequest, f.Type)
}

func (c *conn) session() engine.Session { return engine.Session{Lease: c.lease, Conn: c.id} }

func (c *conn) replyErr(f *ipc.Frame, err error) error {
	return c.reply(&ipc.Frame{Type: ipc.TypeError, ID: f.ID}, ipc.EncodeError(nil, err), -1)
}

// reply writes the reply frame for request f, with fd attached if >= 0.
func (c *conn) reply(f *ipc.Frame, payload []byte, fd int) error {
	typ := f.Type | ipc.ReplyBit
	if f.Type == ipc.TypeError {
		typ = ipc.TypeError
	}
	c.out = ipc.AppendFrame(c.out[:0], &ipc.Frame{Version: ipc.Version, Type: typ, ID: f.ID, Payload: payload})
	if fd >= 0 {
		_, _, err := c.c.WriteMsgUnix(c.out, unix.UnixRights(fd), nil)
		return err
	}
	_, err := c.c.Write(c.out)
	return err
}
