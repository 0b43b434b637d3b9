package main

import (
	"bytes"
	"errors"
	"strconv"
)

// errBadResponse: the server answered something that is not HTTP/1.x.
var errBadResponse = errors.New("bad response")

// response is what framing a response needs: where its head ends and how its body is delimited.
type response struct {
	status      int
	headLen     int // bytes up to and including the blank line
	length      int // Content-Length, or -1
	chunked     bool
	closeAfter  bool // Connection: close, or HTTP/1.0 without keep-alive
	bodyToClose bool // neither a length nor chunks: the body ends when the server closes
}

// parseHead reads a response head from b; ok is false while the head is incomplete.
// Interim 1xx responses are skipped: headLen then covers them too.
func parseHead(b []byte) (r response, ok bool, err error) {
	start := 0
	for {
		end := bytes.Index(b[start:], []byte("\r\n\r\n"))
		if end < 0 {
			return response{}, false, nil
		}
		r, err = parseOneHead(b[start : start+end+2])
		if err != nil {
			return response{}, false, err
		}
		start += end + 4
		if r.status >= 200 || r.status == 101 {
			r.headLen = start
			return r, true, nil
		}
	}
}

// parseOneHead parses a status line and its headers, each line ending in CRLF.
func parseOneHead(head []byte) (response, error) {
	r := response{length: -1}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	// "HTTP/1.1 202 Accepted": the version, then a three-digit status.
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return r, errBadResponse
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return r, errBadResponse
	}
	r.status = status
	http10 := line[7] == '0'
	keepAlive := false
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			return r, errBadResponse
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return r, errBadResponse
			}
			r.length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			r.chunked = bytes.EqualFold(lastToken(value), []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			for _, token := range bytes.Split(value, []byte(",")) {
				token = bytes.TrimSpace(token)
				r.closeAfter = r.closeAfter || bytes.EqualFold(token, []byte("close"))
				keepAlive = keepAlive || bytes.EqualFold(token, []byte("keep-alive"))
			}
		}
	}
	if http10 && !keepAlive {
		r.closeAfter = true
	}
	noBody := status < 200 || status == 204 || status == 304
	switch {
	case noBody:
		r.length, r.chunked = 0, false
	case r.chunked:
		r.length = -1
	case r.length < 0:
		r.bodyToClose, r.closeAfter = true, true
	}
	return r, nil
}

func lastToken(value []byte) []byte {
	if i := bytes.LastIndexByte(value, ','); i >= 0 {
		value = value[i+1:]
	}
	return bytes.TrimSpace(value)
}

// bodyComplete says whether body (the bytes after the head) holds the whole body.
// A body delimited by the server closing is complete only at eof.
func (r response) bodyComplete(body []byte, eof bool) (bool, error) {
	switch {
	case r.bodyToClose:
		return eof, nil
	case r.chunked:
		return chunksComplete(body)
	default:
		return len(body) >= r.length, nil
	}
}

// chunksComplete walks a chunked body: size lines, data, the last (zero) chunk and trailers.
func chunksComplete(b []byte) (bool, error) {
	for {
		line, rest, found := bytes.Cut(b, []byte("\r\n"))
		if !found {
			return false, nil
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseUint(string(bytes.TrimSpace(size)), 16, 31)
		if err != nil {
			return false, errBadResponse
		}
		if n == 0 {
			// Trailer lines, if any, then a blank line.
			for {
				line, rest, found = bytes.Cut(rest, []byte("\r\n"))
				if !found {
					return false, nil
				}
				if len(line) == 0 {
					return true, nil
				}
			}
		}
		if uint64(len(rest)) < n+2 {
			return false, nil
		}
		b = rest[n+2:]
	}
}
