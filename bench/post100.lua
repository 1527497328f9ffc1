-- wrk script for P2: POST /v1/events with a JSON array of events (default 100 of ~500 bytes
-- each, as posted; the agent adds id, source, store_id and timestamps before storing them).
--   wrk -t2 -c4 -d10s -s bench/post100.lua http://127.0.0.1:PORT
-- BENCH_EVENTS_PER_REQUEST and BENCH_EVENT_BYTES override the defaults. The events of one
-- request differ from each other (kiosk-like fields and words); each wrk thread sends the same
-- request over and over, which is fine: the agent gives every event its own id.
-- Counts 202 answers per thread and prints, from done():
--   RESULT wrk <ok_202> <other> <requests> <seconds> <p50_ms> <p99_ms> <events_per_request>

local per_request = tonumber(os.getenv("BENCH_EVENTS_PER_REQUEST") or "100")
local event_bytes = tonumber(os.getenv("BENCH_EVENT_BYTES") or "500")

local words = {
  "shelf", "aisle", "promo", "basket", "coffee", "organic", "bread", "milk", "cheese", "apple",
  "banana", "tomato", "pasta", "rice", "olive", "oil", "frozen", "pizza", "yogurt", "butter",
  "eggs", "chicken", "salmon", "beef", "salad", "water", "juice", "tea", "cereal", "honey",
  "chips", "cookies", "soap", "shampoo", "paper", "towel", "bag", "deal", "member", "points",
  "scan", "search", "results", "detail", "review", "compare", "size", "colour" }

local function event()
  local head = string.format(
    '{"type":"kiosk.view","data":{"screen":"%s","sku":"SKU-%06d","session":"%08x%08x",' ..
    '"dwell_ms":%d,"note":"', words[math.random(#words)], math.random(0, 999999),
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 59999))
  local tail = '"}}'
  local note = {}
  local len = #head + #tail
  while len < event_bytes do
    local w = words[math.random(#words)] .. " "
    table.insert(note, w)
    len = len + #w
  end
  local text = table.concat(note):sub(1, math.max(1, event_bytes - #head - #tail))
  return head .. text .. tail
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = 0
  local events = {}
  for i = 1, per_request do
    events[i] = event()
  end
  wrk.method = "POST"
  wrk.path = "/v1/events"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = "[" .. table.concat(events, ",") .. "]"
end

function response(status, headers, body)
  if status == 202 then
    ok = ok + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_other = 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_other = total_other + t:get("other")
  end
  io.write(string.format("RESULT wrk %d %d %d %.3f %.3f %.3f %d\n", total_ok, total_other,
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, per_request))
end
