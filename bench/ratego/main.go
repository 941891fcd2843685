// ratego sends HTTP/1.1 requests at a constant rate and writes each one's result as vegeta's
// CSV (timestamp, code, latency, bytes out, bytes in, error, body, attack, seq), so that
// bench/ingest.py reads it as it reads vegeta's.
//
// Why not vegeta: on the bench's 2 CPUs, which the server under test shares with its broker and
// its load, vegeta spent about 85 µs of CPU per request at 7,100 requests/s (perf sched, 2026-12-05),
// more than the bare floor server's 57 µs per request, and so took about 60 % of a CPU from the
// processes it measures. ratego does the same job (open loop: a request is sent when it is due,
// on an idle kept-alive connection, or on a new one when all are busy, like vegeta with no
// connection limit; latency from that moment to the last byte of the answer) without net/http:
// each target is a request serialized once, each connection a goroutine with its own buffer.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

type target struct {
	Method string              `json:"method"`
	URL    string              `json:"url"`
	Body   string              `json:"body"`
	Header map[string][]string `json:"header"`
}

type result struct {
	sent     int64 // Unix ns, when the request was handed to a connection
	latency  int64 // ns, from sent to the answer's last byte
	code     int
	bytesOut int
	bytesIn  int
	err      string
}

type job struct {
	seq  int
	sent time.Time
}

type conn struct {
	jobs chan job
	nc   net.Conn
	rd   *bufio.Reader
}

type generator struct {
	addr     string
	requests [][]byte
	timeout  time.Duration
	results  []result
	mu       sync.Mutex
	idle     []*conn
	waiting  []job // at the connection limit: sent, in order, by the next connection free
	opened   int
	max      int
	done     sync.WaitGroup
}

func main() {
	targets := flag.String("targets", "", "vegeta JSON targets file (one JSON object per line)")
	rate := flag.Float64("rate", 0, "requests per second")
	duration := flag.Duration("duration", 0, "how long to send")
	output := flag.String("output", "", "CSV results file (vegeta encode --to csv's columns)")
	timeout := flag.Duration("timeout", 10*time.Second, "per request")
	maxConns := flag.Int("max-connections", 0, "at most this many connections (0: no limit)")
	flag.Parse()
	if *targets == "" || *rate <= 0 || *duration <= 0 || *output == "" {
		flag.Usage()
		os.Exit(2)
	}
	g, err := newGenerator(*targets, *timeout, *maxConns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ratego:", err)
		os.Exit(1)
	}
	total := int(*rate * duration.Seconds())
	g.results = make([]result, total)
	g.run(*rate, total)
	if err := g.write(*output); err != nil {
		fmt.Fprintln(os.Stderr, "ratego:", err)
		os.Exit(1)
	}
}

func newGenerator(path string, timeout time.Duration, maxConns int) (*generator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	g := &generator{timeout: timeout, max: maxConns}
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var t target
		if err := json.Unmarshal(line, &t); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		u, err := url.Parse(t.URL)
		if err != nil || u.Scheme != "http" {
			return nil, fmt.Errorf("%s: only http:// targets: %q", path, t.URL)
		}
		if g.addr == "" {
			g.addr = u.Host
		} else if g.addr != u.Host {
			return nil, fmt.Errorf("%s: every target must name one host, not %s and %s", path, g.addr, u.Host)
		}
		body, err := base64.StdEncoding.DecodeString(t.Body)
		if err != nil {
			return nil, fmt.Errorf("%s: body: %w", path, err)
		}
		var req bytes.Buffer
		fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\n", t.Method, u.RequestURI(), u.Host)
		for name, values := range t.Header {
			for _, v := range values {
				fmt.Fprintf(&req, "%s: %s\r\n", name, v)
			}
		}
		fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", len(body))
		req.Write(body)
		g.requests = append(g.requests, req.Bytes())
	}
	if len(g.requests) == 0 {
		return nil, fmt.Errorf("%s: no targets", path)
	}
	return g, nil
}

// run sends request seq at start + seq/rate; when the pacer wakes late it sends every request
// already due at once, as vegeta does.
func (g *generator) run(rate float64, total int) {
	start := time.Now()
	interval := float64(time.Second) / rate
	for seq := 0; seq < total; seq++ {
		due := start.Add(time.Duration(float64(seq) * interval))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		g.dispatch(seq)
	}
	g.done.Wait()
	g.mu.Lock()
	for _, c := range g.idle {
		close(c.jobs)
	}
	g.mu.Unlock()
}

func (g *generator) dispatch(seq int) {
	g.done.Add(1)
	now := time.Now()
	g.mu.Lock()
	var c *conn
	if n := len(g.idle); n > 0 {
		c = g.idle[n-1]
		g.idle = g.idle[:n-1]
	} else if g.max == 0 || g.opened < g.max {
		g.opened++
		c = &conn{jobs: make(chan job, 1)}
		go g.serve(c)
	}
	if c == nil { // at the limit: the request waits for the first connection to come back
		g.waiting = append(g.waiting, job{seq, now})
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	c.jobs <- job{seq, now}
}

// serve sends each job handed to the connection, then the waiting ones, before going idle.
func (g *generator) serve(c *conn) {
	for j := range c.jobs {
		for {
			g.send(c, j)
			g.mu.Lock()
			if len(g.waiting) == 0 {
				g.idle = append(g.idle, c)
				g.mu.Unlock()
				g.done.Done() // after going idle: run closes the idle connections once all are done
				break
			}
			next := g.waiting[0]
			g.waiting = g.waiting[1:]
			g.mu.Unlock()
			g.done.Done()
			j = next
		}
	}
	if c.nc != nil {
		c.nc.Close()
	}
}

func (g *generator) send(c *conn, j job) {
	req := g.requests[j.seq%len(g.requests)]
	r := &g.results[j.seq]
	r.sent = j.sent.UnixNano()
	r.bytesOut = len(req)
	code, in, keep, err := g.exchange(c, req)
	r.latency = time.Since(j.sent).Nanoseconds()
	r.code, r.bytesIn = code, in
	if err != nil {
		r.err = err.Error()
	}
	if (err != nil || !keep) && c.nc != nil {
		c.nc.Close()
		c.nc = nil
	}
}

// exchange writes one request and reads its answer: status code, bytes read, keep-alive.
func (g *generator) exchange(c *conn, req []byte) (int, int, bool, error) {
	if c.nc == nil {
		nc, err := net.DialTimeout("tcp", g.addr, g.timeout)
		if err != nil {
			return 0, 0, false, err
		}
		c.nc = nc
		if c.rd == nil {
			c.rd = bufio.NewReaderSize(nc, 4096)
		} else {
			c.rd.Reset(nc)
		}
	}
	if err := c.nc.SetDeadline(time.Now().Add(g.timeout)); err != nil {
		return 0, 0, false, err
	}
	if _, err := c.nc.Write(req); err != nil {
		return 0, 0, false, err
	}
	line, err := c.rd.ReadSlice('\n')
	if err != nil {
		return 0, 0, false, err
	}
	in := len(line)
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, in, false, fmt.Errorf("not an HTTP/1.x status line: %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, in, false, fmt.Errorf("status line: %q", line)
	}
	length, keep := -1, line[7] == '1'
	for {
		h, err := c.rd.ReadSlice('\n')
		if err != nil {
			return code, in, false, err
		}
		in += len(h)
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return code, in, false, fmt.Errorf("Content-Length: %q", value)
			}
		case bytes.EqualFold(name, []byte("Connection")):
			keep = !bytes.EqualFold(value, []byte("close"))
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return code, in, false, errors.New("chunked answers are not supported")
		}
	}
	if code == 204 || code == 304 || code < 200 { // never a body (RFC 9112, 6.3)
		length = 0
	}
	if length < 0 {
		return code, in, false, errors.New("an answer without Content-Length")
	}
	n, err := io.CopyN(io.Discard, c.rd, int64(length))
	in += int(n)
	return code, in, keep, err
}

func (g *generator) write(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := bufio.NewWriterSize(f, 1<<20)
	w := csv.NewWriter(buf)
	for seq, r := range g.results {
		err := w.Write([]string{
			strconv.FormatInt(r.sent, 10), strconv.Itoa(r.code), strconv.FormatInt(r.latency, 10),
			strconv.Itoa(r.bytesOut), strconv.Itoa(r.bytesIn), r.err, "", "ratego", strconv.Itoa(seq),
		})
		if err != nil {
			return err
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	if err := buf.Flush(); err != nil {
		return err
	}
	return f.Close()
}
