-- wrk script for the raster-edge side-by-side load benchmark (benches/load/bench.py).
-- Configured through the environment so one script serves every scenario:
--   BENCH_MODE   hot | uniform | zipf | seq | unique
--                hot: no request() (wrk sends one static request; headers come from -H)
--                uniform/zipf: rotate over BENCH_KEYS (API key, URL) combos
--                seq: every combo in order, then again (prewarm); once BENCH_KEYS responses have
--                arrived it creates BENCH_DONE_FILE so the runner can stop wrk (SIGINT)
--                unique: a never-seen URL on every request (all misses)
--   BENCH_PATH   the request target (path and query) of the hot / base URL
--   BENCH_KEYS   number of distinct (API key, URL) combos for uniform/zipf/seq
--   BENCH_APIKEYS comma-separated API keys to rotate through (combo i uses key i % #keys)
--   BENCH_APIVER Api-Version header value
--   BENCH_ZIPF_S Zipf exponent (default 0.99)
--   BENCH_NONCE  makes unique/seq URLs differ between runs
-- done() prints one line "BENCHJSON {...}" with the summary and latency percentiles (µs).

local mode = os.getenv("BENCH_MODE") or "hot"
local base = os.getenv("BENCH_PATH") or "/"
local nkeys = tonumber(os.getenv("BENCH_KEYS") or "100000")
local apiver = os.getenv("BENCH_APIVER") or "2026-05-20"
local zipf_s = tonumber(os.getenv("BENCH_ZIPF_S") or "0.99")
local nonce = os.getenv("BENCH_NONCE") or "0"
local apikeys = {}
for k in string.gmatch(os.getenv("BENCH_APIKEYS") or "demo-read", "[^,]+") do
  apikeys[#apikeys + 1] = k
end
local sep = string.find(base, "?", 1, true) and "&" or "?"

local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

-- combo i (0-based) -> a ready request: API key i % #keys, URL variant floor(i / #keys).
-- The variant changes page (1..120 at pageSize from BENCH_PATH) and adds k=<variant> so every
-- combo is a distinct cache key while responses keep about the hot key's size.
local function combo_request(i)
  local nk = #apikeys
  local key = apikeys[(i % nk) + 1]
  local v = math.floor(i / nk)
  local path = base .. sep .. "k=" .. v
  return wrk.format("GET", path, {
    ["Authorization"] = "Bearer " .. key,
    ["Api-Version"] = apiver,
  })
end

local reqs = nil
local cdf = nil
local counter = 0
local stride = 1
local responses = 0
local done_file = os.getenv("BENCH_DONE_FILE")

local function lower_bound(t, x)
  local lo, hi = 1, #t
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if t[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 1))
  if mode == "uniform" or mode == "zipf" or mode == "seq" then
    reqs = {}
    for i = 0, nkeys - 1 do
      reqs[i + 1] = combo_request(i)
    end
  end
  if mode == "zipf" then
    -- rank r (1-based) has weight 1 / r^s; rank r is combo r-1
    cdf = {}
    local acc = 0
    for r = 1, nkeys do
      acc = acc + 1 / (r ^ zipf_s)
      cdf[r] = acc
    end
    for r = 1, nkeys do cdf[r] = cdf[r] / acc end
  end
  if mode == "seq" then
    -- thread t of n walks combos t-1, t-1+n, ...; wrk does not tell a thread how many
    -- threads there are, so BENCH_THREADS does.
    stride = tonumber(os.getenv("BENCH_THREADS") or "1")
    counter = (tid or 1) - 1
  end
end

local hdr_auth = "Bearer " .. apikeys[1]

function request_dynamic()
  if mode == "uniform" then
    return reqs[math.random(nkeys)]
  elseif mode == "zipf" then
    return reqs[lower_bound(cdf, math.random())]
  elseif mode == "seq" then
    local i = counter % nkeys
    counter = counter + stride
    return reqs[i + 1]
  else -- unique
    counter = counter + 1
    return wrk.format("GET", base .. sep .. "miss=" .. nonce .. "-" .. (tid or 1) .. "-" .. counter, {
      ["Authorization"] = hdr_auth,
      ["Api-Version"] = apiver,
    })
  end
end

if mode ~= "hot" then
  request = request_dynamic
end

-- wrk runs for its whole -d duration even when a thread stops, so the prewarm pass signals
-- the runner through a file instead (one thread: its first BENCH_KEYS responses).
if mode == "seq" and done_file then
  response = function(status, headers, body)
    responses = responses + 1
    if responses == nkeys then
      local f = io.open(done_file, "w")
      if f then f:write("done\n"); f:close() end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
