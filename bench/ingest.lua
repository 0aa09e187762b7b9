-- wrk script: the documented SMS-to-User request, a unique idempotency-key per request.
-- Environment: PIGEON_BENCH_KEY (API key), PIGEON_BENCH_PATH (request path).
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  api_key = os.getenv("PIGEON_BENCH_KEY") or "AXVubzpwQDU1dzByYM=="
  path = os.getenv("PIGEON_BENCH_PATH") or "/v1/users/634b56217f6a7b0be52dffbd/message/sms"
  run_id = os.getenv("PIGEON_BENCH_RUN") or tostring(os.time())
  body = '{"content": {"text": "This is test SMS message"}}'
  non2xx = 0
end

function request()
  counter = counter + 1
  local headers = {
    ["x-api-key"] = api_key,
    ["idempotency-key"] = run_id .. "-" .. tid .. "-" .. counter,
    ["Content-Type"] = "application/json",
  }
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
  end
  io.write(string.format(
    "JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    bad, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
