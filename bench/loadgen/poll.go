package main

import (
	"errors"
	"net"
	"net/url"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// The client is one goroutine around one epoll instance (Linux), and it makes its system
// calls with syscall.RawSyscall. Through net/http, or through net.Conn and goroutines, each
// request woke several threads (the goroutines' and the runtime's monitor, which every blocking
// system call wakes): on the 2-core bench VM that cost 12-16 % of a core at 600 requests/s,
// against about 4 % here, where the thread sleeps in epoll until a response arrives or the
// next request is due, and nothing else wakes up.

const (
	sysEpollPwait2 = 441     // the same on every architecture; nanosecond timeouts (Linux 5.11)
	epollET        = 1 << 31 // syscall.EPOLLET, which the package declares negative
)

// job is one scheduled request.
type job struct {
	k        int
	due      time.Time
	deadline time.Time
}

// target is one URL: its address, the fixed part of its requests, its connections.
type target struct {
	sa      syscall.Sockaddr
	family  int
	head    []byte // request line and headers up to the Idempotency-Key's number
	max     int
	open    int
	idle    []*conn // most recently used last
	pending []job   // due while all max connections were busy
}

func newTarget(raw, prefix string, connections int) (*target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, &url.Error{Op: "parse", URL: raw, Err: errNotHTTP}
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	addr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, err
	}
	t := &target{max: connections}
	if ip4 := addr.IP.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: addr.Port}
		copy(sa.Addr[:], ip4)
		t.sa, t.family = sa, syscall.AF_INET
	} else {
		sa := &syscall.SockaddrInet6{Port: addr.Port}
		copy(sa.Addr[:], addr.IP.To16())
		t.sa, t.family = sa, syscall.AF_INET6
	}
	t.head = []byte("POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUser-Agent: exchange-stream-loadgen\r\nAuthorization: Bearer dev" +
		"\r\nContent-Type: application/json\r\nIdempotency-Key: " + prefix + "-")
	return t, nil
}

// conn is one keep-alive connection, with at most one request in flight.
type conn struct {
	fd         int
	t          *target
	connecting bool
	busy       bool
	job        job
	out        []byte // the request being written
	sent       int
	in         []byte // what has been read of its response
	head       response
	headDone   bool
	served     int // requests answered on this connection
}

// client runs the connections of every target on one epoll instance.
type client struct {
	epfd     int
	byFd     []*conn
	bodies   [][]byte
	rec      *recorder
	timeout  time.Duration
	inFlight int // dispatched, not yet answered or failed
	events   [256]syscall.EpollEvent
	pwait2   bool
}

func newClient(bodies [][]byte, rec *recorder, timeout time.Duration) (*client, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &client{epfd: epfd, bodies: bodies, rec: rec, timeout: timeout, pwait2: true}, nil
}

// dispatch hands j to an idle connection, opens one, or queues j when all are busy.
func (c *client) dispatch(t *target, j job) {
	c.inFlight++
	switch {
	case len(t.idle) > 0:
		cn := t.idle[len(t.idle)-1]
		t.idle = t.idle[:len(t.idle)-1]
		c.start(cn, j)
	case t.open < t.max:
		c.connect(t, j)
	default:
		t.pending = append(t.pending, j)
	}
}

// finish counts the outcome of a dispatched job.
func (c *client) finish(j job, outcome string) {
	c.inFlight--
	var latency time.Duration
	if outcome == "ok" {
		// Waiting for a connection is part of the latency, as it should.
		latency = time.Since(j.due)
	}
	c.rec.done(outcome, latency)
}

// connect opens a connection for j (non-blocking: epoll says when it is up).
func (c *client) connect(t *target, j job) {
	fd, err := syscall.Socket(t.family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		c.finish(j, errorName(err))
		return
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	connErr := syscall.Connect(fd, t.sa)
	if connErr != nil && connErr != syscall.EINPROGRESS {
		syscall.Close(fd)
		c.finish(j, errorName(connErr))
		return
	}
	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET,
		Fd:     int32(fd),
	}
	if err := syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		syscall.Close(fd)
		c.finish(j, errorName(err))
		return
	}
	for len(c.byFd) <= fd {
		c.byFd = append(c.byFd, nil)
	}
	cn := &conn{fd: fd, t: t, connecting: connErr != nil, in: make([]byte, 0, 4096)}
	c.byFd[fd] = cn
	t.open++
	c.start(cn, j)
}

// start writes j's request on cn (at once, unless the connection is still being set up).
func (c *client) start(cn *conn, j job) {
	body := c.bodies[j.k%len(c.bodies)]
	out := append(cn.out[:0], cn.t.head...)
	out = strconv.AppendInt(out, int64(j.k), 10)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\n\r\n"...)
	cn.out = append(out, body...)
	cn.busy, cn.job, cn.sent = true, j, 0
	cn.in, cn.headDone = cn.in[:0], false
	if !cn.connecting {
		c.flush(cn)
	}
}

// flush writes what is left of the request; the socket's buffer normally takes it all.
func (c *client) flush(cn *conn) {
	for cn.sent < len(cn.out) {
		p := cn.out[cn.sent:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(cn.fd),
			uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch {
		case errno == syscall.EAGAIN:
			return // epoll says when there is room
		case errno == syscall.EINTR:
			continue
		case errno != 0:
			c.broken(cn, errno)
			return
		}
		cn.sent += int(n)
	}
}

// event handles what epoll reported for fd.
func (c *client) event(fd int, events uint32) {
	if fd >= len(c.byFd) || c.byFd[fd] == nil {
		return
	}
	cn := c.byFd[fd]
	if cn.connecting {
		soErr, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err == nil && soErr != 0 {
			err = syscall.Errno(soErr)
		}
		if err != nil {
			c.broken(cn, err)
			return
		}
		if events&syscall.EPOLLOUT == 0 {
			return
		}
		cn.connecting = false
	}
	if events&syscall.EPOLLOUT != 0 && cn.busy && cn.sent < len(cn.out) {
		c.flush(cn)
	}
	if c.byFd[fd] == cn && events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		c.readable(cn)
	}
}

// readable reads until the socket is drained (epoll is edge-triggered) and frames the response.
func (c *client) readable(cn *conn) {
	for {
		if len(cn.in) == cap(cn.in) {
			cn.in = append(cn.in, 0)[:len(cn.in)]
		}
		free := cn.in[len(cn.in):cap(cn.in)]
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(cn.fd),
			uintptr(unsafe.Pointer(&free[0])), uintptr(len(free)))
		switch {
		case errno == syscall.EAGAIN:
			return
		case errno == syscall.EINTR:
			continue
		case errno != 0:
			c.broken(cn, errno)
			return
		case n == 0:
			c.closed(cn)
			return
		}
		if !cn.busy {
			c.broken(cn, errBadResponse) // bytes nobody asked for
			return
		}
		cn.in = cn.in[:len(cn.in)+int(n)]
		if done, err := c.frame(cn, false); err != nil {
			c.broken(cn, err)
			return
		} else if done {
			return
		}
	}
}

// frame completes cn's job when its whole response has been read.
func (c *client) frame(cn *conn, eof bool) (bool, error) {
	if !cn.headDone {
		head, ok, err := parseHead(cn.in)
		if err != nil || !ok {
			return false, err
		}
		cn.head, cn.headDone = head, true
	}
	complete, err := cn.head.bodyComplete(cn.in[cn.head.headLen:], eof)
	if err != nil || !complete {
		return false, err
	}
	status := cn.head.status
	outcome := "ok"
	if status < 200 || status >= 300 {
		outcome = "http " + strconv.Itoa(status)
	}
	j := cn.job
	cn.busy = false
	cn.served++
	c.finish(j, outcome)
	if cn.head.closeAfter || eof {
		c.drop(cn)
		c.replace(cn.t)
	} else {
		c.release(cn)
	}
	return true, nil
}

// closed: the server closed cn.
func (c *client) closed(cn *conn) {
	if !cn.busy {
		c.drop(cn)
		return
	}
	if cn.headDone {
		if done, _ := c.frame(cn, true); done {
			return
		}
	}
	c.broken(cn, errDisconnected)
}

// broken: cn failed; its job fails too, unless the server had merely closed it while idle.
func (c *client) broken(cn *conn, err error) {
	busy, j := cn.busy, cn.job
	closedIdle := errors.Is(err, errDisconnected) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
	retry := busy && closedIdle && cn.served > 0 && len(cn.in) == 0
	c.drop(cn)
	switch {
	case retry:
		// The request went out as the server closed the idle connection: once more on a
		// fresh one (the Idempotency-Key makes a repeat harmless; net/http reasons so too).
		c.inFlight--
		c.dispatch(cn.t, j)
	case busy:
		c.finish(j, errorName(err))
		c.replace(cn.t)
	}
}

// drop closes cn and forgets it.
func (c *client) drop(cn *conn) {
	syscall.Close(cn.fd) // also takes it out of the epoll set
	c.byFd[cn.fd] = nil
	cn.t.open--
	for i, idle := range cn.t.idle {
		if idle == cn {
			cn.t.idle = append(cn.t.idle[:i], cn.t.idle[i+1:]...)
			break
		}
	}
}

// release gives a free connection the next queued job, or puts it among the idle.
func (c *client) release(cn *conn) {
	if j, ok := c.nextPending(cn.t); ok {
		c.start(cn, j)
		return
	}
	cn.t.idle = append(cn.t.idle, cn)
}

// replace opens a connection for the next queued job after one was closed.
func (c *client) replace(t *target) {
	if t.open >= t.max {
		return
	}
	if j, ok := c.nextPending(t); ok {
		c.connect(t, j)
	}
}

// nextPending is the oldest queued job still within its deadline; expired ones time out.
func (c *client) nextPending(t *target) (job, bool) {
	now := time.Now()
	for len(t.pending) > 0 {
		j := t.pending[0]
		t.pending = t.pending[1:]
		if now.Before(j.deadline) {
			return j, true
		}
		c.finish(j, "timeout")
	}
	return job{}, false
}

// expire times out the jobs past their deadline: in flight (closing their connection) or queued.
func (c *client) expire(targets []*target) {
	now := time.Now()
	for _, cn := range c.byFd {
		if cn != nil && cn.busy && now.After(cn.job.deadline) {
			c.broken(cn, errTimeout)
		}
	}
	for _, t := range targets {
		for len(t.pending) > 0 && now.After(t.pending[0].deadline) {
			c.finish(t.pending[0], "timeout")
			t.pending = t.pending[1:]
		}
	}
}

// poll waits up to wait for events and handles them.
func (c *client) poll(wait time.Duration) {
	wait = max(wait, 0)
	var n uintptr
	var errno syscall.Errno
	if c.pwait2 {
		ts := syscall.NsecToTimespec(int64(wait))
		n, _, errno = syscall.RawSyscall6(sysEpollPwait2, uintptr(c.epfd),
			uintptr(unsafe.Pointer(&c.events[0])), uintptr(len(c.events)),
			uintptr(unsafe.Pointer(&ts)), 0, 0)
		if errno == syscall.ENOSYS {
			c.pwait2 = false
		}
	}
	if !c.pwait2 {
		// Milliseconds, rounded up: rounding down would wake early and spin.
		ms := (wait + time.Millisecond - 1) / time.Millisecond
		n, _, errno = syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(c.epfd),
			uintptr(unsafe.Pointer(&c.events[0])), uintptr(len(c.events)), uintptr(ms), 0, 0)
	}
	if errno != 0 {
		return // EINTR: the runtime's preemption signal; the caller loops
	}
	for i := range int(n) {
		c.event(int(c.events[i].Fd), c.events[i].Events)
	}
}
