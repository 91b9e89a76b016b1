package ipc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/observability"
	"github.com/kvd-project/kvd/shm"
)

// Options configure a Client.
type Options struct {
	// Name identifies the client in kvd status.
	Name string
	// Wait is how long Dial (and a reconnect) keeps retrying while kvd is
	// not yet listening; 0 tries once.
	Wait time.Duration
}

// Client is the typed client of kvd's socket: the gateway's scheduler and
// `kvd status` both use it. It keeps a mirror of its sequences' block
// tables, fed by each step's delta, so steps cost one small round trip.
//
// A Client is safe for concurrent use; calls are serialised. When the
// connection drops, the call in progress fails with ErrDisconnected and the
// next call reconnects, reclaiming the lease's sequences; if kvd restarted
// meanwhile, that call fails with ErrRestarted, every sequence is gone, and
// later calls work on the new kvd.
type Client struct {
	mu     sync.Mutex
	path   string
	opts   Options
	conn   *net.UnixConn
	nextID uint64
	out    []byte
	in     []byte

	hello *HelloReply
	lease string
	// helloReply and helloFD pass a hello's raw reply from hello to
	// connect.
	helloReply []byte
	helloFD    int
	pool       *shm.Segment
	gpuFD      heldFD // a GPU pool's file descriptor from the last hello
	onDrop     func()
	tables     *blocks.Tables
	planBuf    blocks.PlanBuf // Plan's storage, reused step to step
	// inflight is the step reserved but not reported done, for rolling the
	// mirror back if the connection drops (kvd rolls its own back).
	inflight *Step
	gen      uint64 // connections made (Generation)
	// done is a finished step to report with the next Step request.
	done *StepDone
	// free is kvd's free block count as of the last reply.
	free int
	// reached says whether the last call's request got a reply.
	reached bool
	// lastDone is the last step reported done, for a reconnect's hello.
	lastDone *StepDone
	// abandoned are sequences to close in kvd at the next chance.
	abandoned []uint64
}

// Step is a reserved step: its id and its appends (sequence ids are the
// client's).
type Step struct {
	ID      uint64
	Appends []blocks.Append
}

// Dial connects to kvd at path and says hello.
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	c := &Client{path: path, opts: opts}
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Hello is kvd's reply to the current connection's hello.
func (c *Client) Hello() *HelloReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello
}

// Layout is the pool's geometry.
func (c *Client) Layout() shm.Layout {
	h := c.Hello()
	dt, _ := shm.ParseDType(h.DType) // checked when the hello came
	return shm.Layout{NumBlocks: h.NumBlocks, BlockSize: h.BlockSize, KVHeads: h.KVHeads, HeadDim: h.HeadDim, DType: dt}
}

// TakeGPUPoolFD hands over the file descriptor of a GPU pool shared by one
// (see HelloReply) from the last hello, or -1 if there is none or it was
// taken: the caller closes it once it has mapped the pool, so that a dead
// kvd's memory is not kept alive by it.
func (c *Client) TakeGPUPoolFD() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gpuFD.take()
}

// heldFD is a file descriptor the client owns, or none (the zero value).
type heldFD struct {
	fd   int
	held bool
}

func (h *heldFD) set(fd int) {
	h.close()
	if fd >= 0 {
		h.fd, h.held = fd, true
	}
}

func (h *heldFD) close() {
	if h.held {
		unix.Close(h.fd)
		h.held = false
	}
}

// take hands the descriptor over (-1 if none).
func (h *heldFD) take() int {
	if !h.held {
		return -1
	}
	h.held = false
	return h.fd
}

// Pool is the mapped pool; it changes if kvd restarts. It is nil for a
// GPU pool, which Hello's PoolHandle or GPUPoolFD names.
func (c *Client) Pool() *shm.Segment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pool
}

func dialOnce(path string) (*net.UnixConn, error) {
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
}

// connect dials (retrying while kvd starts) and says hello, reclaiming the
// lease if there is one. Called with mu held, or before c is shared.
func (c *Client) connect(ctx context.Context) error {
	deadline := time.Now().Add(c.opts.Wait)
	backoff := 5 * time.Millisecond
	var p []byte
	fd := -1
	for {
		var err error
		p, fd, err = c.sayHello(ctx)
		if err == nil {
			break
		}
		// Nobody listening yet, or a kvd that died under the new
		// connection (a dying kvd can accept before its listener closes):
		// wait and dial again, within Wait.
		retry := errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, ErrDisconnected)
		if !retry {
			return fmt.Errorf("kvd at %s: %w", c.path, err)
		}
		if time.Now().After(deadline) {
			if errors.Is(err, ErrDisconnected) {
				return err
			}
			return fmt.Errorf("%w at %s (start it with `kvd serve`): %v", ErrNotRunning, c.path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for kvd at %s: %w", c.path, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
	var h HelloReply
	if err := json.Unmarshal(p, &h); err != nil {
		unix.Close(fd)
		c.drop()
		return fmt.Errorf("hello reply: %w", err)
	}
	if h.DType == "" {
		h.DType = shm.Float32.String() // a kvd from before bfloat16 pools
	}
	if _, err := shm.ParseDType(h.DType); err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		c.drop()
		return fmt.Errorf("kvd's pool holds K and V as %q, which this gateway cannot read: %w", h.DType, err)
	}
	// A restart, or a lease kvd let go of (its grace ran out): either way
	// the sequences are gone.
	restarted := c.hello != nil && (c.hello.Instance != h.Instance || h.Lease != c.lease)
	if h.GPU != "" {
		// A GPU pool: the client's backend opens it (ipc has no CUDA),
		// by its handle or its file descriptor; check only that they came
		// whole.
		if h.PoolHandle != nil && fd >= 0 {
			unix.Close(fd)
			fd = -1
		}
		if (h.PoolHandle != nil && len(h.PoolHandle) != 64) || (h.PoolHandle == nil && fd < 0) || len(h.StepEvent) != 64 || len(h.EvictEvent) != 64 {
			if fd >= 0 {
				unix.Close(fd)
			}
			c.drop()
			return fmt.Errorf("kvd sent a GPU pool without a whole CUDA IPC handle or file descriptor, or without its events")
		}
		if c.pool != nil {
			c.pool.Close()
			c.pool = nil
		}
		c.gpuFD.set(fd)
	} else {
		c.gpuFD.close() // a host pool after a GPU one: kvd restarted otherwise
		if c.hello == nil || restarted || c.pool == nil {
			if fd < 0 {
				c.drop()
				return fmt.Errorf("kvd sent no pool fd")
			}
			seg, err := shm.Map(fd, h.PoolBytes)
			if err != nil {
				c.drop()
				return err
			}
			if c.pool != nil {
				c.pool.Close()
			}
			c.pool = seg
		} else if fd >= 0 {
			unix.Close(fd) // the same pool, already mapped
		}
	}
	old := c.tables
	c.hello, c.lease, c.free = &h, h.Lease, h.FreeBlocks
	if len(h.Policies) != h.Layers {
		c.drop()
		return fmt.Errorf("kvd sent %d layer policies for %d layers", len(h.Policies), h.Layers)
	}
	c.tables = blocks.NewTables(h.Policies, h.BlockSize)
	c.done = nil
	if old != nil && !restarted {
		if c.inflight != nil {
			for _, a := range c.inflight.Appends {
				old.Unappend(a.Seq)
			}
		}
		keep := map[uint64]bool{}
		for _, id := range h.Reclaimed {
			keep[id] = true
			if !old.Has(blocks.SeqID(id)) {
				// Opened by a call whose reply was lost, or closed by one
				// that never arrived: close it.
				c.abandoned = append(c.abandoned, id)
			}
		}
		old.Each(func(id blocks.SeqID) {
			if !keep[uint64(id)] {
				old.Remove(id)
			}
		})
		c.tables = old
	}
	c.inflight = nil
	c.gen++
	if restarted {
		return fmt.Errorf("%w (kvd %.8s, lease %.8s)", ErrRestarted, h.Instance, h.Lease)
	}
	return nil
}

// Generation counts the client's connections to kvd: a step reserved under
// one generation is not kvd's (nor its tables') under the next.
func (c *Client) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// closeAbandoned closes, best effort, the sequences given up while kvd
// was away; it never fails the call that carries it.
func (c *Client) closeAbandoned(ctx context.Context) {
	if len(c.abandoned) == 0 || c.conn == nil {
		return
	}
	ids := c.abandoned
	c.abandoned = nil
	if _, _, err := c.roundTrip(ctx, TypeClose, EncodeSeqs(nil, ids), false); errors.Is(err, ErrDisconnected) {
		c.abandoned = ids // try again after the reconnect
	}
}

// sayHello dials once and says hello, returning the raw reply and the
// pool's fd (-1 if none came).
func (c *Client) sayHello(ctx context.Context) ([]byte, int, error) {
	uc, err := dialOnce(c.path)
	if err != nil {
		return nil, -1, err
	}
	c.conn = uc
	hreq := HelloRequest{Name: c.opts.Name, Lease: c.lease}
	if c.lastDone != nil {
		// Even if its notice was sent, the old connection's goroutine in
		// kvd may not have handled it yet.
		hreq.Done, hreq.Failed = c.lastDone.ID, c.lastDone.Failed
	}
	req, _ := json.Marshal(hreq)
	p, fd, err := c.roundTrip(ctx, TypeHello, req, true)
	if err != nil {
		c.drop()
	}
	return p, fd, err
}

// drop closes the connection; the next call reconnects.
func (c *Client) drop() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
		c.gpuFD.close() // it would keep a dying kvd's pool alive
		if c.onDrop != nil {
			c.onDrop()
		}
	}
}

// OnDrop has f called (with the client's lock held: f must not call the
// client) when the connection to kvd is found dead, before any reconnect:
// a GPU pool's user unmaps it there, so that a restarted kvd can have the
// memory back.
func (c *Client) OnDrop(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDrop = f
}

// errNotSent marks a request that never reached kvd (the write failed), so
// it is safe to send again on a new connection.
var errNotSent = errors.New("request not sent")

// retryable are the requests that may be sent again even if kvd saw them
// before the connection dropped: status reads, and steps, because a
// reclaimed lease rolls back a step the client never saw finish.
var retryable = map[uint16]bool{TypeStep: true, TypeStatus: true}

// call makes one request, reconnecting first if the connection dropped. A
// request lost with its connection is sent once more after reconnecting if
// it never reached kvd or is retryable. If kvd restarted meanwhile the call
// fails with ErrRestarted instead.
func (c *Client) call(ctx context.Context, typ uint16, payload []byte) ([]byte, error) {
	return c.callWith(ctx, typ, func() []byte { return payload })
}

// callWith is call with the payload built for each attempt (a step's
// payload drops its done report once a reconnect's hello delivered it).
func (c *Client) callWith(ctx context.Context, typ uint16, payload func() []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		if c.conn == nil {
			if err := c.connect(ctx); err != nil {
				return nil, err
			}
		}
		c.closeAbandoned(ctx)
		p, _, err := c.roundTrip(ctx, typ, payload(), false)
		var remote *RemoteError
		c.reached = err == nil || errors.As(err, &remote)
		if attempt == 0 && errors.Is(err, ErrDisconnected) && (errors.Is(err, errNotSent) || retryable[typ]) {
			continue
		}
		return p, err
	}
}

// roundTrip writes a request frame and reads its reply; a transport error
// drops the connection.
func (c *Client) roundTrip(ctx context.Context, typ uint16, payload []byte, wantFD bool) ([]byte, int, error) {
	c.nextID++
	c.out = AppendFrame(c.out[:0], &Frame{Version: Version, Type: typ, ID: c.nextID, TraceParent: observability.Inject(ctx), Payload: payload})
	if d, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(d)
	} else {
		c.conn.SetDeadline(time.Time{})
	}
	if _, err := c.conn.Write(c.out); err != nil {
		c.drop()
		return nil, -1, fmt.Errorf("%w: %w: %v", ErrDisconnected, errNotSent, err)
	}
	fd := -1
	var r io.Reader = c.conn
	if wantFD {
		// The fd rides on the reply's first bytes: read them with recvmsg.
		head := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := c.conn.ReadMsgUnix(head, oob)
		if err != nil {
			c.drop()
			return nil, -1, fmt.Errorf("%w: %v", ErrDisconnected, err)
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) > 0 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) > 0 {
				fd = fds[0]
			}
		}
		r = io.MultiReader(bytesReader(head[:n]), c.conn)
	}
	f, buf, err := ReadFrame(r, c.in)
	c.in = buf
	if err != nil {
		c.drop()
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, -1, fmt.Errorf("%w: %v", ErrDisconnected, err)
	}
	if f.ID != c.nextID {
		c.drop()
		return nil, -1, fmt.Errorf("%w: reply %d to request %d", ErrDisconnected, f.ID, c.nextID)
	}
	if f.Type == TypeError {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, -1, DecodeError(f.Payload)
	}
	return f.Payload, fd, nil
}

type sliceReader struct{ b []byte }

func bytesReader(b []byte) *sliceReader { return &sliceReader{b} }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// Open starts sequences with ids the caller chooses.
func (c *Client) Open(ctx context.Context, ids ...uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.call(ctx, TypeOpen, EncodeSeqs(nil, ids)); err != nil {
		return err
	}
	for _, id := range ids {
		c.tables.Add(blocks.SeqID(id))
	}
	return nil
}

// Close ends sequences and frees their blocks.
func (c *Client) Close(ctx context.Context, ids ...uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sendDone() // a finished sequence's last step is done too
	_, err := c.call(ctx, TypeClose, EncodeSeqs(nil, ids))
	for _, id := range ids {
		c.tables.Remove(blocks.SeqID(id))
		if c.inflight != nil {
			c.inflight.drop(blocks.SeqID(id))
		}
	}
	return err
}

func (s *Step) drop(id blocks.SeqID) {
	for i, a := range s.Appends {
		if a.Seq == id {
			s.Appends = append(s.Appends[:i], s.Appends[i+1:]...)
			return
		}
	}
}

// Step reserves slots for the step's appends (sequence ids are the caller's)
// and applies the blocks they took to the client's tables; Plan then gives
// the forward pass its slots and tables. A step reported with Done is sent
// along in the same round trip.
func (c *Client) Step(ctx context.Context, appends []blocks.Append) (*Step, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reached = false
	p, err := c.callWith(ctx, TypeStep, func() []byte {
		req := StepRequest{Appends: appends}
		if c.done != nil {
			req.Done, req.Failed = c.done.ID, c.done.Failed
		}
		return req.Encode(nil)
	})
	if c.reached {
		// kvd took the report, even if the reservation failed. Otherwise
		// the report stays for the next request or a reconnect's hello.
		c.done = nil
	}
	if err != nil {
		return nil, err
	}
	var rep StepReply
	if err := rep.Decode(p); err != nil {
		c.drop()
		return nil, fmt.Errorf("step reply: %w", err)
	}
	if err := c.tables.Apply(appends, &rep.Delta); err != nil {
		c.drop()
		return nil, fmt.Errorf("step reply does not fit the client's tables: %w", err)
	}
	c.free = int(rep.Free)
	c.inflight = &Step{ID: rep.StepID, Appends: append([]blocks.Append(nil), appends...)}
	return c.inflight, nil
}

// evicts reports whether any layer has between-step work in kvd.
func (c *Client) evicts() bool {
	for _, p := range c.hello.Policies {
		if p.Decode != "" {
			return true
		}
	}
	return false
}

// FreeBlocks is kvd's free block count as of its last reply.
func (c *Client) FreeBlocks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.free
}

// Abandon forgets sequences now and closes them in kvd with the next call
// that reaches it.
func (c *Client) Abandon(ids ...uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		c.tables.Remove(blocks.SeqID(id))
		if c.inflight != nil {
			c.inflight.drop(blocks.SeqID(id))
		}
	}
	c.abandoned = append(c.abandoned, ids...)
}

// Plan returns every layer's slots and attention tables for the step in
// flight. Call it before the next Step; the plans live in storage the next
// Plan reuses.
func (c *Client) Plan(st *Step) ([]blocks.LayerPlan, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight != st {
		return nil, fmt.Errorf("step %d is no longer in flight", st.ID)
	}
	return c.tables.PlanInto(st.Appends, &c.planBuf)
}

// StepPlan is Plan a layer at a time (blocks.StepPlan): the caller builds
// each layer's plan as its forward pass reaches the layer, until it
// reports the step done. The plan holds the tables as they are now, so
// building it needs no lock: other calls may go on meanwhile.
func (c *Client) StepPlan(st *Step) (*blocks.StepPlan, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight != st {
		return nil, fmt.Errorf("step %d is no longer in flight", st.ID)
	}
	return c.tables.StepPlanInto(st.Appends, &c.planBuf)
}

// Done reports a step finished without waiting for a reply. When layers
// evict, it is sent at once, so that kvd runs its between-step work while
// the caller hands out the step's tokens, and the next request waits for
// it; otherwise it
// rides on the next Step. failed rolls the step's tokens back in kvd and in
// the client's tables. If the report cannot be sent, the next Step or the
// reconnect's hello carries it.
func (c *Client) Done(id uint64, failed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight == nil || c.inflight.ID != id {
		// Not this connection's step in flight (a reconnect dropped it):
		// kvd does not know it, and a report would fail the next step.
		return
	}
	c.finish(id, failed)
	c.done = &StepDone{ID: id, Failed: failed}
	c.lastDone = c.done
	if c.evicts() {
		c.sendDone()
	}
	// Otherwise there is nothing for kvd to do between steps: the report
	// rides on the next step's request, saving a message each way.
}

// sendDone sends the pending step-done report as a notice (no reply); if
// it cannot be sent, the next request or the reconnect's hello carries it.
func (c *Client) sendDone() {
	if c.done == nil || c.conn == nil {
		return
	}
	c.nextID++
	c.out = AppendFrame(c.out[:0], &Frame{Version: Version, Type: TypeStepNotify, ID: c.nextID, Payload: c.done.Encode(nil)})
	c.conn.SetDeadline(time.Time{})
	if _, err := c.conn.Write(c.out); err != nil {
		c.drop()
		return
	}
	c.done = nil
}

func (c *Client) finish(id uint64, failed bool) {
	if c.inflight == nil || c.inflight.ID != id {
		return
	}
	if failed {
		for _, a := range c.inflight.Appends {
			c.tables.Unappend(a.Seq)
		}
	}
	c.inflight = nil
}

// StepDone reports a step finished in its own round trip.
func (c *Client) StepDone(ctx context.Context, id uint64, failed bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := StepDone{ID: id, Failed: failed}
	if _, err := c.call(ctx, TypeStepDone, d.Encode(nil)); err != nil {
		return err
	}
	c.lastDone = &d
	c.finish(id, failed)
	return nil
}

// Status asks kvd for its status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.call(ctx, TypeStatus, nil)
	if err != nil {
		return nil, err
	}
	return decodeStatus(p)
}

func decodeStatus(p []byte) (*Status, error) {
	var s Status
	if err := json.Unmarshal(p, &s); err != nil {
		return nil, fmt.Errorf("status reply: %w", err)
	}
	return &s, nil
}

// Tables is the client's mirror of its sequences' block tables; callers
// must not modify it.
func (c *Client) Tables() *blocks.Tables {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tables
}

// Shutdown closes the connection and unmaps the pool; kvd keeps the lease's
// sequences for its grace period.
func (c *Client) Shutdown() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop()
	c.gpuFD.close()
	if c.pool != nil {
		err := c.pool.Close()
		c.pool = nil
		return err
	}
	return nil
}

// QueryStatus asks kvd at path for its status without opening a session
// (no lease, so `kvd status` does not show up as a client).
func QueryStatus(ctx context.Context, path string) (*Status, error) {
	uc, err := dialOnce(path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w at %s (start it with `kvd serve`)", ErrNotRunning, path)
		}
		return nil, fmt.Errorf("kvd at %s: %w", path, err)
	}
	c := &Client{path: path, conn: uc}
	defer c.drop()
	p, _, err := c.roundTrip(ctx, TypeStatus, nil, false)
	if err != nil {
		return nil, err
	}
	return decodeStatus(p)
}

// ForceDisconnect closes the connection as a crash would, without ending the
// lease; the next call reconnects. For tests and for a gateway that detects
// a wedged socket.
func (c *Client) ForceDisconnect() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop()
	return nil
}
