-- wrk script: method, token and If-None-Match from the environment; prints one JSON line.
local method = os.getenv("WRK_METHOD") or "GET"
local token = os.getenv("WRK_TOKEN")
local etag = os.getenv("WRK_ETAG")
wrk.method = method
wrk.headers["Accept"] = "application/json"
if token then wrk.headers["Authorization"] = "Token " .. token end
if etag then wrk.headers["If-None-Match"] = etag end
if method == "POST" then
  wrk.body = "{}"
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
