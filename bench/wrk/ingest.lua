-- wrk script: POST /v2/ingest with a fresh Idempotency-Key per request, cycling through bodies.
--
--   wrk -t2 -c32 -d10s --latency -s bench/wrk/ingest.lua http://127.0.0.1:8080 -- BODIES [PREFIX]
--
-- BODIES is a file of request bodies, one JSON document per line (bench/wrk.py writes it from
-- the FHIR fixtures); without it, the BENCH_BODIES environment variable names the file. PREFIX
-- makes keys unique across runs (default: time and a random number). The URL's path is used
-- when it is not "/", so the same script drives any service that takes the v2 body, e.g. the
-- seed's Go ingest-api, which needs the same two headers (Bearer dev with ENV=local, and a key
-- of at least 8 characters).
-- done() prints one line "wrk-json {...}" with latency percentiles in microseconds.

local threads = {}
local thread_count = 0
local run_prefix

-- Runs in wrk's main Lua state, once per thread, before the threads start.
function setup(thread)
  if run_prefix == nil then
    math.randomseed(os.time())
    run_prefix = string.format("wrk-%d-%06d", os.time(), math.random(0, 999999))
  end
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  thread:set("default_prefix", run_prefix)
  table.insert(threads, thread)
end

-- Below runs in each thread's own Lua state.
local bodies = {}
local body_count = 0
local next_body = 0
local counter = 0
local key_prefix
local path
local headers

local function read_bodies(file_name)
  local file = io.open(file_name, "r")
  if file == nil then
    error("cannot open bodies file " .. tostring(file_name))
  end
  for line in file:lines() do
    if #line > 0 then
      body_count = body_count + 1
      bodies[body_count] = line
    end
  end
  file:close()
  if body_count == 0 then
    error("no bodies in " .. file_name)
  end
end

function init(args)
  local file_name = args[1] or os.getenv("BENCH_BODIES")
  if file_name == nil then
    error("pass the bodies file: wrk ... -s ingest.lua URL -- BODIES [PREFIX]")
  end
  read_bodies(file_name)
  key_prefix = (args[2] or default_prefix) .. "-t" .. thread_id .. "-"
  -- Threads start at different bodies so that they do not send the same sequence.
  next_body = (thread_id - 1) * 37 % body_count
  path = wrk.path
  if path == nil or path == "" or path == "/" then
    path = "/v2/ingest"
  end
  headers = {
    ["Authorization"] = "Bearer dev",
    ["Content-Type"] = "application/json",
  }
end

function request()
  counter = counter + 1
  next_body = next_body % body_count + 1
  headers["Idempotency-Key"] = key_prefix .. counter
  return wrk.format("POST", path, headers, bodies[next_body])
end

function done(summary, latency, requests)
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
    string.format('"threads": %d', thread_count),
  }
  io.write("wrk-json {" .. table.concat(parts, ", ") .. "}\n")
end
