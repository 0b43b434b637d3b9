package main

import "testing"

func TestFraming(t *testing.T) {
	cases := []struct {
		name     string
		in       string
		eof      bool
		ok       bool
		status   int
		complete bool
		close    bool
	}{
		{"head incomplete", "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n", false, false, 0, false, false},
		{"length, body incomplete", "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{", false, true, 202, false, false},
		{"length, body complete", "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}", false, true, 202, true, false},
		{"connection close", "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false, true, 503, true, true},
		{"http/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, true, 200, true, true},
		{"chunked, incomplete", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", false, true, 200, false, false},
		{"chunked, complete", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false, true, 200, true, false},
		{"chunked, trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\r\n", false, true, 200, true, false},
		{"to close, open", "HTTP/1.1 200 OK\r\n\r\nabc", false, true, 200, false, true},
		{"to close, closed", "HTTP/1.1 200 OK\r\n\r\nabc", true, true, 200, true, true},
		{"204 has no body", "HTTP/1.1 204 No Content\r\n\r\n", false, true, 204, true, false},
		{"100 continue skipped", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", false, true, 202, true, false},
	}
	for _, c := range cases {
		r, ok, err := parseHead([]byte(c.in))
		if err != nil || ok != c.ok || r.status != c.status {
			t.Errorf("%s: parseHead = %+v, %v, %v", c.name, r, ok, err)
			continue
		}
		if !ok {
			continue
		}
		complete, err := r.bodyComplete([]byte(c.in)[r.headLen:], c.eof)
		if err != nil || complete != c.complete || r.closeAfter != c.close {
			t.Errorf("%s: complete %v close %v err %v", c.name, complete, r.closeAfter, err)
		}
	}
}

func TestNotHTTP(t *testing.T) {
	for _, in := range []string{"SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 2x2 Odd\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n"} {
		if _, _, err := parseHead([]byte(in)); err != errBadResponse {
			t.Errorf("%q: err = %v", in, err)
		}
	}
}
