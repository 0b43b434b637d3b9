-- wrk script: POST one fixed GraphQL request body to /graphql, again and again.
--
--   wrk -t1 -c16 -d10s --latency -s bench/wrk/graphql.lua http://127.0.0.1:8080 -- BODY [AUTH]
--
-- BODY is a file holding the whole JSON request ({"query": ..., "variables": ...}); bench/read.py
-- writes it. AUTH is the Authorization header's value (default "Bearer dev", the local-dev
-- recipient when the worker runs with ENV=local). The URL's path is used when it is not "/".
-- A GraphQL failure comes with HTTP 200, so every answer whose body has an "errors" member is
-- counted too. done() prints one line "wrk-json {...}" (the format bench/wrk.py parses), with
-- latency percentiles in microseconds and "graphql_errors".

local threads = {}

-- Runs in wrk's main Lua state, once per thread, before the threads start.
function setup(thread)
  table.insert(threads, thread)
end

-- Below runs in each thread's own Lua state.
local request_bytes
graphql_errors = 0

function init(args)
  local file_name = args[1]
  if file_name == nil then
    error("pass the body file: wrk ... -s graphql.lua URL -- BODY [AUTH]")
  end
  local file = io.open(file_name, "rb")
  if file == nil then
    error("cannot open body file " .. file_name)
  end
  local body = file:read("*a")
  file:close()
  local path = wrk.path
  if path == nil or path == "" or path == "/" then
    path = "/graphql"
  end
  local headers = {
    ["Authorization"] = args[2] or "Bearer dev",
    ["Content-Type"] = "application/json",
  }
  -- The request never changes: format it once, and request() only hands it back.
  request_bytes = wrk.format("POST", path, headers, body)
end

function request()
  return request_bytes
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  end
end

function done(summary, latency, requests)
  local graphql = 0
  for _, thread in ipairs(threads) do
    graphql = graphql + (thread:get("graphql_errors") or 0)
  end
  local e = summary.errors
  local parts = {
    string.format('"requests": %d', summary.requests),
    string.format('"duration_us": %d', summary.duration),
    string.format('"bytes": %d', summary.bytes),
    string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99.9": %d}',
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)),
    string.format('"graphql_errors": %d', graphql),
    string.format('"threads": %d', #threads),
  }
  io.write("wrk-json {" .. table.concat(parts, ", ") .. "}\n")
end
