-- Replays requests read from a file, for scripts/bench-directory.sh.
--
--   wrk -t T -c C -d D -s scripts/bench/replay.lua URL -- get  FILE T [PREFIX]
--   wrk -t T -c C -d D -s scripts/bench/replay.lua URL -- post FILE T
--
-- get:  each line is appended to PREFIX to form the path of a GET.
-- post: each line is a JSON body, POSTed to URL's path.
--
-- For get, every thread cycles through all lines from its own offset. For
-- post, thread k of T takes lines k+1, k+1+T, k+1+2T, ...: disjoint subsets,
-- so a signed registration is sent once per run unless a thread runs out of
-- lines and wraps around (reported as "wrapped"; the repeats then answer
-- 409 and count as non-2xx). Every request is formatted once in init(),
-- so the per-request Lua cost is a table lookup, the same for every server.
--
-- done() prints one machine-readable line starting with "RESULT".

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  local file, count, prefix = args[2], tonumber(args[3]), args[4] or ""
  if (mode ~= "get" and mode ~= "post") or file == nil or count == nil then
    error("usage: -- get|post FILE THREADS [PREFIX]")
  end
  local headers = { ["Content-Type"] = "application/json" }
  requests = {}
  local line_number = 0
  for line in io.lines(file) do
    if mode == "get" then
      requests[#requests + 1] = wrk.format("GET", prefix .. line)
    elseif line_number % count == thread_index then
      requests[#requests + 1] = wrk.format("POST", wrk.path, headers, line)
    end
    line_number = line_number + 1
  end
  if #requests == 0 then
    error("no lines for thread " .. thread_index .. " in " .. file)
  end
  -- GETs need no disjoint subsets; threads start at different offsets.
  next_request = 1
  if mode == "get" then
    next_request = 1 + math.floor(#requests * thread_index / count)
  end
  wrapped = 0
end

function request()
  local r = requests[next_request]
  next_request = next_request + 1
  if next_request > #requests then
    next_request = 1
    if mode == "post" then
      wrapped = wrapped + 1
    end
  end
  return r
end

function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f non2xx=%d socket_errors=%d wrapped=%d "
      .. "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, seconds, summary.requests / seconds, e.status,
    e.connect + e.read + e.write + e.timeout, wraps,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
