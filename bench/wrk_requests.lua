-- wrk script of bench/run.py: sends pre-rendered raw HTTP requests, one connection per wrk thread.
--
--   wrk -t N -c N -d S -s bench/wrk_requests.lua URL -- PREFIX EXPECTED CYCLE OFFSETS
--
-- PREFIX.<k> (k = 0 … N-1) holds thread k's own requests, written by bench/loadgen.py as
-- "<length>\n<raw request bytes>" records. Thread k sends them in order, each once, starting at
-- record OFFSETS[k] + 1 (OFFSETS: comma-separated, what a previous run of the same files used);
-- with CYCLE = 1 it starts over at the end (requests that may be repeated: a token, an account),
-- otherwise it stops (settlements, vouchers, login codes: each may be used once).
--
-- With one connection per thread, request() and response() of a thread alternate, so each
-- response's latency is measured here (CLOCK_MONOTONIC through LuaJIT's ffi) rather than taken
-- from wrk's histogram, which wrk "corrects" for coordinated omission before done() sees it —
-- meaningless for a closed loop and not what bench/run.py's Python client measures.
-- A response with status EXPECTED is ok (its latency kept), anything else an error (the first
-- one kept as a sample). done() prints one line "bench-wrk {json}" that bench/loadgen.py parses.

local ffi = require("ffi")
ffi.cdef [[
  typedef long time_t;
  typedef struct { time_t tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

-- main state: every thread, numbered in creation order ----------------------------------------
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- thread states ----------------------------------------------------------------------------------
local queue = {}
position = 0                 -- records used so far (the next is position + 1); read by done()
local cycle = false
local expected = 200
local first_call = true      -- wrk calls thread 0's request() once before the run, to check it
local started_at = 0

sent, ok, errors, exhausted, sample = 0, 0, 0, 0, ""
statuses = {}
latencies = {}               -- µs of the ok responses

function init(args)
  local prefix = args[1]                -- args[0] is wrk's URL
  expected = tonumber(args[2])
  cycle = args[3] == "1"
  local k = 0
  for offset in string.gmatch(args[4] or "", "[^,]+") do
    if k == id then position = tonumber(offset) end
    k = k + 1
  end
  local file = assert(io.open(prefix .. "." .. id, "rb"))
  while true do
    local header = file:read("*l")
    if not header then break end
    local length = tonumber(header)
    queue[#queue + 1] = file:read(length)
  end
  file:close()
  if #queue == 0 then error("no requests in " .. prefix .. "." .. id) end
  if position >= #queue and cycle then position = position % #queue end
end

function request()
  if first_call and id == 0 then
    first_call = false                  -- wrk's check of the script: not sent, nothing used up
    return queue[1]
  end
  first_call = false
  if position >= #queue then
    if not cycle then
      exhausted = 1
      wrk.thread:stop()
      return ""                          -- an empty write: nothing is sent, and the loop ends
    end
    position = 0
  end
  position = position + 1
  sent = sent + 1
  started_at = now_us()
  return queue[position]
end

function response(status, headers, body)
  local elapsed = now_us() - started_at
  statuses[status] = (statuses[status] or 0) + 1
  if status == expected then
    ok = ok + 1
    latencies[#latencies + 1] = math.floor(elapsed + 0.5)
  else
    errors = errors + 1
    if sample == "" then
      sample = status .. " " .. string.gsub(string.sub(body or "", 1, 200), "[^%w%p ]", "?")
    end
  end
end

-- done (main state) ------------------------------------------------------------------------------
local function quote(text)
  return '"' .. string.gsub(text, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
  local total = {sent = 0, ok = 0, errors = 0, exhausted = 0}
  local codes, positions, all, sample_text = {}, {}, {}, ""
  for k, thread in ipairs(threads) do
    for name in pairs(total) do total[name] = total[name] + thread:get(name) end
    for status, count in pairs(thread:get("statuses")) do codes[status] = (codes[status] or 0) + count end
    positions[k] = thread:get("position")
    local mine = thread:get("latencies")
    for i = 1, #mine do all[#all + 1] = string.format("%d", mine[i]) end
    if sample_text == "" then sample_text = thread:get("sample") end
  end
  local code_parts = {}
  for status, count in pairs(codes) do code_parts[#code_parts + 1] = quote(tostring(status)) .. ":" .. count end
  io.write("bench-wrk {",
    '"sent":', total.sent, ',"ok":', total.ok, ',"errors":', total.errors, ',"exhausted":', total.exhausted,
    ',"duration_us":', summary.duration, ',"responses":', summary.requests,
    ',"socket_errors":{"connect":', summary.errors.connect, ',"read":', summary.errors.read,
    ',"write":', summary.errors.write, ',"timeout":', summary.errors.timeout, "}",
    ',"statuses":{', table.concat(code_parts, ","), "}",
    ',"positions":[', table.concat(positions, ","), "]",
    ',"sample":', quote(sample_text),
    ',"latencies_us":[', table.concat(all, ","), "]}\n")
end
