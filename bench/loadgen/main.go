// Command loadgen is the open-loop (fixed-rate) HTTP client of bench/openloop.py.
//
//	loadgen --url http://127.0.0.1:8080/v2/ingest --bodies bodies.jsonl --rate 600 --duration 10
//
// It POSTs the bodies of --bodies (one JSON document per line, in turn) to --url at --rate
// requests/s for --duration seconds, request k due at --start-at + k/rate and sent on time
// whether or not the earlier ones have been answered, with the headers Authorization: Bearer
// dev, Content-Type: application/json and Idempotency-Key: <prefix>-<k>. Latency is counted
// from the due time, so a stall of the server counts for every request that should have been
// sent during it (no coordinated omission); lateness is the time a request was handed to a
// connection minus its due time. A request is sent on an idle keep-alive connection, on a new
// one while there are fewer than --connections to its URL, or else waits for one to be free.
//
// With --processes N and --phase i, this process sends request k at (k*N + i) / (N*rate): N
// processes interleave evenly. Request k of process i goes to the URL numbered (k*N + i) modulo
// the number of --url flags, so any number of processes spreads the load evenly over the URLs.
//
// It prints one JSON object: {"latencies_ms": [...], "late_ms": [...], "outcomes": {"ok": n,
// "http 503": n, "timeout": n, ...}}, latencies of the 2xx answers only, and "unfinished" for
// the requests still unanswered --drain seconds after the last was due.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
)

var (
	errNotHTTP      = errors.New("only http:// URLs")
	errTimeout      = errors.New("timeout")
	errDisconnected = errors.New("server disconnected")
)

type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

type options struct {
	urls        urlList
	bodies      string
	prefix      string
	rate        float64
	duration    float64
	startAt     float64
	timeout     float64
	drain       float64
	phase       int
	processes   int
	connections int
}

func parseFlags() options {
	var o options
	flag.Var(&o.urls, "url", "endpoint to POST to; repeat to spread the requests over several")
	flag.StringVar(&o.bodies, "bodies", "", "file of request bodies, one JSON document per line")
	flag.StringVar(&o.prefix, "prefix", "open", "Idempotency-Key prefix: the key is <prefix>-<k>")
	flag.Float64Var(&o.rate, "rate", 0, "requests/s of this process")
	flag.Float64Var(&o.duration, "duration", 0, "seconds of sending")
	flag.Float64Var(&o.startAt, "start-at", 0, "epoch seconds of the first due time (0: now)")
	flag.Float64Var(&o.timeout, "timeout", 30, "seconds per request, waiting for a connection included")
	flag.Float64Var(&o.drain, "drain", -1, "seconds to wait for answers after the last is due (default: --timeout)")
	flag.IntVar(&o.phase, "phase", 0, "this process's number among --processes")
	flag.IntVar(&o.processes, "processes", 1, "client processes sharing the schedule")
	flag.IntVar(&o.connections, "connections", 256, "connections per URL at most")
	flag.Parse()
	if len(o.urls) == 0 || o.bodies == "" || o.rate <= 0 || o.duration < 0 || o.timeout <= 0 {
		fail(2, "--url, --bodies, a positive --rate and a positive --timeout are required")
	}
	if o.processes < 1 || o.phase < 0 || o.phase >= o.processes || o.connections < 1 {
		fail(2, "need 0 <= --phase < --processes and --connections >= 1")
	}
	if o.drain < 0 {
		o.drain = o.timeout
	}
	return o
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(code)
}

func readBodies(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var bodies [][]byte
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimRight(line, "\r"); line != "" {
			bodies = append(bodies, []byte(line))
		}
	}
	if len(bodies) == 0 {
		return nil, fmt.Errorf("%s holds no bodies", path)
	}
	return bodies, nil
}

// recorder collects the results (from the one goroutine of the client).
type recorder struct {
	finished  int
	latencies []float64
	late      []float64
	outcomes  map[string]int
}

func newRecorder(count int) *recorder {
	return &recorder{
		latencies: make([]float64, 0, count),
		late:      make([]float64, 0, count),
		outcomes:  map[string]int{},
	}
}

func (r *recorder) started(late time.Duration) { r.late = append(r.late, ms(late)) }

func (r *recorder) done(outcome string, latency time.Duration) {
	r.finished++
	r.outcomes[outcome]++
	if outcome == "ok" {
		r.latencies = append(r.latencies, ms(latency))
	}
}

// report is the JSON document of what was counted, with the unanswered as "unfinished".
func (r *recorder) report(count int) ([]byte, error) {
	if unfinished := count - r.finished; unfinished > 0 {
		r.outcomes["unfinished"] += unfinished
	}
	return json.Marshal(map[string]any{
		"latencies_ms": r.latencies,
		"late_ms":      r.late,
		"outcomes":     r.outcomes,
	})
}

// ms rounds to the microsecond: finer digits would only lengthen the output.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/1e3) / 1e3
}

// errorName names a transport error the way an operator would: timeout, refused, reset...
func errorName(err error) string {
	switch {
	case errors.Is(err, errTimeout), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, errDisconnected):
		return "server disconnected"
	case errors.Is(err, errBadResponse):
		return "bad response"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "connection: " + errno.Error()
	}
	return "error"
}

func main() {
	// One goroutine does everything; a second P would only give the runtime threads to wake.
	runtime.GOMAXPROCS(1)
	o := parseFlags()
	bodies, err := readBodies(o.bodies)
	if err != nil {
		fail(1, "%v", err)
	}
	targets := make([]*target, len(o.urls))
	for i, raw := range o.urls {
		if targets[i], err = newTarget(raw, o.prefix, o.connections); err != nil {
			fail(2, "%v", err)
		}
	}
	count := int(o.duration * o.rate)
	rec := newRecorder(count)
	timeout := time.Duration(o.timeout * float64(time.Second))
	c, err := newClient(bodies, rec, timeout)
	if err != nil {
		fail(1, "%v", err)
	}
	interval := float64(time.Second) / o.rate
	// A monotonic reading for the first due time: the wall clock may be stepped meanwhile.
	first := time.Now()
	if o.startAt > 0 {
		wall := float64(first.UnixNano()) / 1e9
		first = first.Add(time.Duration((o.startAt - wall) * float64(time.Second)))
	}
	first = first.Add(time.Duration(float64(o.phase) * interval / float64(o.processes)))
	dueOf := func(k int) time.Time { return first.Add(time.Duration(float64(k) * interval)) }

	// Timeouts are checked this often: no sooner than needed, and no extra wake-ups under load.
	sweepEvery := min(timeout/10, 100*time.Millisecond)
	nextSweep := time.Now().Add(sweepEvery)
	var drainEnd time.Time
	for k := 0; ; {
		now := time.Now()
		// Every request already due goes now (after a late wake-up, several at once).
		for ; k < count && !dueOf(k).After(now); k++ {
			rec.started(now.Sub(dueOf(k)))
			t := targets[(k*o.processes+o.phase)%len(targets)]
			c.dispatch(t, job{k: k, due: dueOf(k), deadline: now.Add(timeout)})
			now = time.Now()
		}
		if k == count {
			if c.inFlight == 0 {
				break
			}
			if drainEnd.IsZero() {
				drainEnd = now.Add(time.Duration(o.drain * float64(time.Second)))
			}
			if !now.Before(drainEnd) {
				c.expire(targets) // what reached its deadline is a timeout, not unfinished
				break
			}
		}
		if !now.Before(nextSweep) {
			c.expire(targets)
			nextSweep = now.Add(sweepEvery)
		}
		var wake time.Time
		if k < count {
			wake = dueOf(k)
		} else {
			wake = drainEnd
		}
		if c.inFlight > 0 && nextSweep.Before(wake) {
			wake = nextSweep
		}
		c.poll(time.Until(wake))
	}
	data, err := rec.report(count)
	if err != nil {
		fail(1, "%v", err)
	}
	os.Stdout.Write(data)
}
