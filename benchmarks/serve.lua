-- wrk's side of benchmarks/serve.py --client wrk: POST requests with a JSON body and the
-- API key, a user drawn at random per request, and at the end the latency quantiles (0.1% to
-- 99.9% in steps of 0.1%) and the error counts as one JSON line that serve.py parses.
--
-- wrk -t1 -c8 -d10s -s benchmarks/serve.lua http://127.0.0.1:3000 -- \
--     USERS_FILE K EXPLAIN PATH SEED "Bearer rsk_..."
local users = {}
local k, explain, path, auth = 10, "false", "/", ""

function init(args)
  for line in io.lines(args[1]) do users[#users + 1] = line end
  k, explain, path, auth = args[2], args[3], args[4], args[6]
  math.randomseed(tonumber(args[5]) + os.time() % 1000)
end

function request()
  local user = users[math.random(#users)]
  local body = '{"user_id": "' .. user .. '", "k": ' .. k .. ', "explain": ' .. explain .. '}'
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = auth}
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local quantiles = {}
  for i = 1, 999 do quantiles[i] = latency:percentile(i / 10) end
  local e = summary.errors
  io.write('WRK_RESULT {"requests": ' .. summary.requests
    .. ', "duration_us": ' .. summary.duration
    .. ', "status_errors": ' .. e.status
    .. ', "socket_errors": ' .. (e.connect + e.read + e.write + e.timeout)
    .. ', "quantiles_us": [' .. table.concat(quantiles, ",") .. ']}' .. string.char(10))
end
