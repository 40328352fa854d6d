-- bench/lua/chat.lua - wrk script: POST a chat request of a given shape and size.
--
--   wrk -t1 -c64 -d6s --latency -s bench/lua/chat.lua URL -- SHAPE BYTES MODE
--
--   SHAPE  openai    -> POST /v1/chat/completions, model gpt-4o-mini
--          anthropic -> POST /v1/messages,         model claude-sonnet-4-5
--   BYTES  exact size of the JSON body (e.g. 1024, 61440)
--   MODE   stream | nonstream ("stream": true/false in the body)
--
-- The URL's path is ignored; the script sets the path from SHAPE. At the end
-- done() prints one machine-readable line for bench/run:
--   BENCH requests=N duration_us=N bytes=N p50_us=N p90_us=N p99_us=N
--         max_us=N connect=N read=N write=N status=N timeout=N
--
-- Run under plain lua5.1 (`lua5.1 bench/lua/chat.lua SHAPE BYTES MODE`) it
-- prints the body and the request headers instead (used for the pre-flight
-- check with curl), so wrk and curl send byte-identical requests.

local filler = "The quick brown fox jumps over the lazy dog while the model thinks. "

-- A request the way the official SDKs serialise it: "model" after "messages"
-- (openai-python and anthropic-sdk both emit it late), so a proxy has to scan
-- the body rather than find the model in the first bytes.
local function make_body(shape, size, stream)
	local flag = stream and "true" or "false"
	local head, tail
	if shape == "anthropic" then
		head = '{"max_tokens":256,"system":"You are a concise assistant.",'
			.. '"messages":[{"role":"user","content":"'
		tail = '"}],"model":"claude-sonnet-4-5","stream":' .. flag .. '}'
	else
		head = '{"messages":[{"role":"system","content":"You are a concise assistant."},'
			.. '{"role":"user","content":"'
		tail = '"}],"model":"gpt-4o-mini","max_tokens":256,"stream":' .. flag .. '}'
	end
	local n = size - #head - #tail
	if n < 0 then n = 0 end
	local text = string.rep(filler, math.ceil(n / #filler) + 1):sub(1, n)
	return head .. text .. tail
end

local function make_headers(shape, stream)
	local h = { ["Content-Type"] = "application/json" }
	if shape == "anthropic" then
		h["x-api-key"] = "sk-bench-client"
		h["anthropic-version"] = "2023-06-01"
	else
		h["Authorization"] = "Bearer sk-bench-client"
	end
	if stream then h["Accept"] = "text/event-stream" end
	return h
end

local function path_of(shape)
	return shape == "anthropic" and "/v1/messages" or "/v1/chat/completions"
end

local function parse_args(a)
	local shape = a[1] or "openai"
	local size = tonumber(a[2] or "1024")
	local stream = (a[3] or "nonstream") == "stream"
	assert(shape == "openai" or shape == "anthropic", "SHAPE must be openai or anthropic")
	assert(size and size > 0, "BYTES must be a positive number")
	return shape, size, stream
end

if wrk == nil then
	-- Plain Lua: print path, headers (one per line) and the body for curl.
	local shape, size, stream = parse_args(arg)
	local body = make_body(shape, size, stream)
	local mode = arg[4] or "body"
	if mode == "path" then
		io.write(path_of(shape))
	elseif mode == "headers" then
		for k, v in pairs(make_headers(shape, stream)) do io.write(k, ": ", v, "\n") end
	else
		io.write(body)
	end
	return
end

function init(args)
	local shape, size, stream = parse_args(args)
	wrk.method = "POST"
	wrk.path = path_of(shape)
	wrk.body = make_body(shape, size, stream)
	for k, v in pairs(make_headers(shape, stream)) do wrk.headers[k] = v end
end

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		"BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d "
		.. "max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
		summary.requests, summary.duration, summary.bytes,
		latency:percentile(50), latency:percentile(90), latency:percentile(99),
		latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
