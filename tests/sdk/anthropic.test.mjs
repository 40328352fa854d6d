// anthropic.test.mjs - the official `@anthropic-ai/sdk` through sluice, against
// a model served by an Anthropic-format provider (to_anthropic: pass-through)
// and by an OpenAI-format provider (to_openai: converted both ways).

import Anthropic from '@anthropic-ai/sdk';
import {
	PNG_B64, TARGETS, eq, ok, positiveInt, expectError, flatText, mockText, test, Skip,
} from './harness.mjs';

const TEXT = mockText(8);
const WEATHER_SCHEMA = {
	type: 'object',
	properties: { text: { type: 'string', description: 'where' } },
	required: ['text'],
};
const WEATHER_TOOL = { name: 'get_weather', description: 'The weather somewhere', input_schema: WEATHER_SCHEMA };

function checkUsage(u, outputTokens, what = 'usage') {
	ok(u, `${what}: missing`);
	positiveInt(u.input_tokens, `${what}.input_tokens`);
	eq(u.output_tokens, outputTokens, `${what}.output_tokens`);
}

function openaiMaxTokens(body) {
	return body.max_completion_tokens ?? body.max_tokens;
}

// The event types of a raw stream must read: message_start, then blocks
// (content_block_start, content_block_delta*, content_block_stop) with
// indexes 0, 1, ..., then message_delta, message_stop.
function checkEventOrder(events) {
	const types = events.map((e) => e.type);
	const got = types.join(' ');
	eq(types[0], 'message_start', `first event (${got})`);
	eq(types.at(-1), 'message_stop', `last event (${got})`);
	eq(types.at(-2), 'message_delta', `second-to-last event (${got})`);
	let open = null;
	let next = 0;
	for (const e of events.slice(1, -2)) {
		if (e.type === 'content_block_start') {
			ok(open === null, `content_block_start while block ${open} is open (${got})`);
			eq(e.index, next, `content_block_start index (${got})`);
			open = e.index;
		} else if (e.type === 'content_block_delta') {
			eq(e.index, open, `content_block_delta index (${got})`);
		} else if (e.type === 'content_block_stop') {
			eq(e.index, open, `content_block_stop index (${got})`);
			open = null;
			next++;
		} else {
			throw new Error(`unexpected event ${e.type} (${got})`);
		}
	}
	ok(open === null, `block ${open} never stopped (${got})`);
	ok(next > 0, `no content block (${got})`);
	eq(types.filter((t) => t === 'message_delta').length, 1, 'message_delta events');
}

for (const T of TARGETS) {
	const n = (name) => `sdk.anthropic.${name}.${T.tag}`;

	test(n('messages_create'), async (t) => {
		const m = await t.anthropic().messages.create({
			model: T.model, system: 'You are terse.', max_tokens: 100, temperature: 0.5,
			stop_sequences: ['END'], messages: [{ role: 'user', content: 'Say hello' }],
		});
		eq(m.type, 'message', 'type');
		eq(m.role, 'assistant', 'role');
		ok(typeof m.id === 'string' && m.id.length > 0, 'id');
		ok(typeof m.model === 'string' && m.model.length > 0, 'model');
		eq(m.content.map((b) => [b.type, b.text]), [['text', TEXT]], 'content');
		eq(m.stop_reason, 'end_turn', 'stop_reason');
		eq(m.stop_sequence ?? null, null, 'stop_sequence');
		checkUsage(m.usage, 8);
		const up = await t.upstreamFor(T);
		eq(up.requests, 1, 'upstream requests');
		const b = up.body;
		if (T.format === 'openai') {
			ok(['system', 'developer'].includes(b.messages[0].role),
				`upstream messages[0].role: got ${b.messages[0].role}, want system or developer`);
			eq(flatText(b.messages[0].content), 'You are terse.', 'upstream system message');
			eq(b.messages.length, 2, 'upstream messages');
			eq([b.messages[1].role, flatText(b.messages[1].content)], ['user', 'Say hello'], 'upstream user message');
			eq(openaiMaxTokens(b), 100, 'upstream max tokens');
			eq([b.stop].flat(), ['END'], 'upstream stop');
		} else {
			eq(b.system, 'You are terse.', 'upstream system');
			eq(b.messages, [{ role: 'user', content: 'Say hello' }], 'upstream messages');
			eq(b.max_tokens, 100, 'upstream max_tokens');
			eq(b.stop_sequences, ['END'], 'upstream stop_sequences');
		}
		eq(b.temperature, 0.5, 'upstream temperature');
	});

	test(n('messages_max_tokens'), async (t) => {
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 3, messages: [{ role: 'user', content: 'Say hello' }],
		});
		eq(m.content.map((b) => [b.type, b.text]), [['text', mockText(3)]], 'content');
		eq(m.stop_reason, 'max_tokens', 'stop_reason');
		checkUsage(m.usage, 3);
	});

	test(n('messages_stream_helper'), async (t) => {
		const stream = t.anthropic().messages.stream({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		});
		const deltas = [];
		let snapshot = '';
		stream.on('text', (delta, snap) => {
			deltas.push(delta);
			snapshot = snap;
		});
		const final = await stream.finalMessage();
		eq(deltas.join(''), TEXT, "the 'text' deltas");
		ok(deltas.length >= 2, `only ${deltas.length} text delta(s): not streamed`);
		eq(snapshot, TEXT, "the last 'text' snapshot");
		eq(final.content.map((b) => [b.type, b.text]), [['text', TEXT]], 'finalMessage content');
		eq(final.stop_reason, 'end_turn', 'finalMessage stop_reason');
		checkUsage(final.usage, 8, 'finalMessage usage');
		eq(await stream.finalText(), TEXT, 'finalText()');
	});

	test(n('messages_stream_raw_events'), async (t) => {
		const stream = await t.anthropic().messages.create({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }], stream: true,
		});
		const events = [];
		for await (const e of stream)
			events.push(e);
		checkEventOrder(events);
		const start = events[0].message;
		eq([start.type, start.role], ['message', 'assistant'], 'message_start message');
		eq(start.content, [], 'message_start content');
		ok(start.id, 'message_start id');
		const blocks = events.filter((e) => e.type === 'content_block_start');
		eq(blocks.length, 1, 'content blocks');
		eq(blocks[0].content_block.type, 'text', 'content_block_start type');
		const deltas = events.filter((e) => e.type === 'content_block_delta');
		ok(deltas.every((e) => e.delta.type === 'text_delta'), 'every delta is a text_delta');
		eq(deltas.map((e) => e.delta.text).join(''), TEXT, 'text deltas');
		const md = events.at(-2);
		eq(md.delta.stop_reason, 'end_turn', 'message_delta stop_reason');
		eq(md.usage?.output_tokens, 8, 'message_delta usage.output_tokens');
		const up = await t.upstreamFor(T);
		eq(up.body.stream, true, 'upstream stream');
		if (T.format === 'openai')
			eq(up.body.stream_options?.include_usage, true, 'upstream stream_options.include_usage');
	});

	test(n('messages_stream_usage'), async (t) => {
		// message_start carries the input usage, message_delta the final
		// counts; never zeros (a converted OpenAI stream reports usage only at
		// its end)
		const stream = await t.anthropic().messages.create({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }], stream: true,
		});
		const events = [];
		for await (const e of stream)
			events.push(e);
		const start = events.find((e) => e.type === 'message_start');
		ok(start, 'no message_start');
		positiveInt(start.message.usage?.input_tokens, 'message_start usage.input_tokens');
		const md = events.find((e) => e.type === 'message_delta');
		ok(md, 'no message_delta');
		eq(md.usage?.output_tokens, 8, 'message_delta usage.output_tokens');
		if (md.usage.input_tokens != null)
			positiveInt(md.usage.input_tokens, 'message_delta usage.input_tokens');
	});

	test(n('tool_use_round_trip'), async (t) => {
		const client = t.anthropic();
		const messages = [{ role: 'user', content: 'Weather in Paris?' }];
		const m1 = await client.messages.create({
			model: T.model, max_tokens: 200, messages, tools: [WEATHER_TOOL], tool_choice: { type: 'any' },
		});
		eq(m1.stop_reason, 'tool_use', 'stop_reason');
		const uses = m1.content.filter((b) => b.type === 'tool_use');
		eq(uses.length, 1, `tool_use blocks (content ${JSON.stringify(m1.content)})`);
		const use = uses[0];
		ok(typeof use.id === 'string' && use.id.length > 0, 'tool_use id');
		ok(/^[a-zA-Z0-9_-]+$/.test(use.id), `tool_use id ${use.id}: Anthropic ids match [a-zA-Z0-9_-]+`);
		eq(use.name, 'get_weather', 'tool_use name');
		eq(use.input, { text: TEXT }, 'tool_use input');
		checkUsage(m1.usage, 8);
		let up = await t.upstreamFor(T);
		if (T.format === 'openai') {
			eq(up.body.tools, [{ type: 'function', function: { name: 'get_weather',
				description: 'The weather somewhere', parameters: WEATHER_SCHEMA } }], 'upstream tools');
			eq(up.body.tool_choice, 'required', 'upstream tool_choice (any -> required)');
		} else {
			eq(up.body.tools, [WEATHER_TOOL], 'upstream tools');
		}

		messages.push({ role: 'assistant', content: m1.content },
			{ role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'sunny, 21 C' }] });
		const m2 = await client.messages.create({ model: T.model, max_tokens: 200, messages, tools: [WEATHER_TOOL] });
		eq(m2.stop_reason, 'tool_use', 'second answer stop_reason (the mock calls again)');
		up = await t.upstreamFor(T);
		const um = up.body.messages;
		if (T.format === 'openai') {
			eq(um.length, 3, 'upstream messages');
			eq(um[1].role, 'assistant', 'upstream messages[1].role');
			const tc = um[1].tool_calls?.[0];
			ok(tc, 'upstream assistant message has tool_calls');
			eq([tc.id, tc.type, tc.function?.name], [use.id, 'function', 'get_weather'], 'upstream tool call');
			eq(JSON.parse(tc.function.arguments), { text: TEXT }, 'upstream tool call arguments');
			eq([um[2].role, um[2].tool_call_id, flatText(um[2].content)], ['tool', use.id, 'sunny, 21 C'],
				'upstream tool message');
		} else {
			eq(um[2].content[0], { type: 'tool_result', tool_use_id: use.id, content: 'sunny, 21 C' },
				'upstream tool_result');
		}
	});

	test(n('tool_use_stream'), async (t) => {
		const stream = t.anthropic().messages.stream({
			model: T.model, max_tokens: 200, messages: [{ role: 'user', content: 'Weather in Paris?' }],
			tools: [WEATHER_TOOL],
		});
		const partials = [];
		stream.on('inputJson', (partial) => partials.push(partial));
		const events = [];
		stream.on('streamEvent', (e) => events.push(e));
		const final = await stream.finalMessage();
		checkEventOrder(events);
		eq(final.stop_reason, 'tool_use', 'stop_reason');
		const use = final.content.find((b) => b.type === 'tool_use');
		ok(use, `no tool_use block (content ${JSON.stringify(final.content)})`);
		eq([use.name, use.input], ['get_weather', { text: TEXT }], 'tool_use');
		ok(use.id, 'tool_use id');
		ok(partials.length >= 2, `${partials.length} inputJson event(s): not streamed`);
		const start = events.find((e) => e.type === 'content_block_start' && e.content_block.type === 'tool_use');
		ok(start, 'a content_block_start of type tool_use');
		eq([start.content_block.id, start.content_block.name], [use.id, 'get_weather'], 'tool_use block start');
		const jd = events.filter((e) => e.type === 'content_block_delta' && e.index === start.index);
		ok(jd.every((e) => e.delta.type === 'input_json_delta'), 'tool_use deltas are input_json_delta');
		eq(JSON.parse(jd.map((e) => e.delta.partial_json).join('')), { text: TEXT }, 'joined partial_json');
		checkUsage(final.usage, 8, 'finalMessage usage');
	});

	test(n('image_base64'), async (t) => {
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 100,
			messages: [{ role: 'user', content: [
				{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_B64 } },
				{ type: 'text', text: 'What is in this image?' },
			] }],
		});
		eq(m.content.map((b) => [b.type, b.text]), [['text', TEXT]], 'content');
		const up = await t.upstreamFor(T);
		const parts = up.body.messages[0].content;
		ok(Array.isArray(parts), 'upstream content is an array of parts');
		if (T.format === 'openai') {
			const img = parts.find((p) => p.type === 'image_url');
			ok(img, 'upstream has an image_url part');
			eq(img.image_url?.url, `data:image/png;base64,${PNG_B64}`, 'upstream image_url.url');
			eq(parts.find((p) => p.type === 'text')?.text, 'What is in this image?', 'upstream text part');
		} else {
			eq(parts[0].source, { type: 'base64', media_type: 'image/png', data: PNG_B64 }, 'upstream image source');
		}
	});

	test(n('thinking'), async (t) => {
		// The mock never generates thinking blocks: this checks the request
		// mapping (thinking -> reasoning_effort) and that the answer reads.
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
			messages: [{ role: 'user', content: 'Think, then say hello' }],
		});
		eq(m.content.filter((b) => b.type === 'text').map((b) => b.text), [TEXT], 'text blocks');
		eq(m.stop_reason, 'end_turn', 'stop_reason');
		const up = await t.upstreamFor(T);
		if (T.format === 'openai') {
			ok(['minimal', 'low', 'medium', 'high'].includes(up.body.reasoning_effort),
				`upstream reasoning_effort: got ${JSON.stringify(up.body.reasoning_effort)}`);
			eq(openaiMaxTokens(up.body), 2048, 'upstream max tokens');
		} else {
			eq(up.body.thinking, { type: 'enabled', budget_tokens: 1024 }, 'upstream thinking');
		}
	});

	test(n('thinking_history'), async (t) => {
		// a tool loop turn that carries the previous turn's thinking block:
		// accepted, and passed on (Anthropic: with its signature, unchanged)
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
			tools: [WEATHER_TOOL],
			messages: [
				{ role: 'user', content: 'Weather in Paris?' },
				{ role: 'assistant', content: [
					{ type: 'thinking', thinking: 'I should call get_weather.', signature: 'c2lnLW1vY2stMQ==' },
					{ type: 'tool_use', id: 'toolu_hist01', name: 'get_weather', input: { text: 'Paris' } },
				] },
				{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_hist01', content: 'sunny' }] },
			],
		});
		eq(m.stop_reason, 'tool_use', 'stop_reason');
		const up = await t.upstreamFor(T);
		const um = up.body.messages;
		if (T.format === 'openai') {
			eq(um.length, 3, 'upstream messages');
			eq(um[1].tool_calls?.[0]?.id, 'toolu_hist01', 'upstream tool call id');
			eq(um[2].tool_call_id, 'toolu_hist01', 'upstream tool_call_id');
			eq(um[1].reasoning_content, 'I should call get_weather.', 'upstream assistant reasoning_content');
		} else {
			eq(um[1].content[0], { type: 'thinking', thinking: 'I should call get_weather.',
				signature: 'c2lnLW1vY2stMQ==' }, 'upstream thinking block');
		}
	});

	test(n('count_tokens'), async (t) => {
		const words = Array.from({ length: 200 }, (_, i) => `word${i % 37}`).join(' ');
		const r = await t.anthropic().messages.countTokens({
			model: T.model, system: 'You are terse.',
			messages: [{ role: 'user', content: words }],
		});
		positiveInt(r.input_tokens, 'input_tokens');
		// 200 words of ~6 characters: a sane count is in the hundreds
		ok(r.input_tokens >= 100 && r.input_tokens <= 2000,
			`input_tokens ${r.input_tokens}: want 100..2000 for 200 short words`);
		const st = await t.mockStats();
		if (T.format === 'anthropic') {
			// exact: asked of the upstream
			eq(st.last_request?.path, '/v1/messages/count_tokens', 'upstream path');
		} else {
			// counted locally: an OpenAI-format upstream has no count_tokens
			eq(st.last_request, null, 'no upstream request for a local count');
		}
	});

	test(n('error_400_upstream'), async (t) => {
		const err = await expectError(() => t.anthropic().messages.create({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		}, { headers: { 'x-mock-status': '400' } }), Anthropic.BadRequestError, 400);
		eq(err.error?.type, 'error', `error body in the Anthropic shape: ${JSON.stringify(err.error)}`);
		eq(err.error?.error?.type, 'invalid_request_error', 'error.type');
	});

	test(n('error_429'), async (t) => {
		const err = await expectError(() => t.anthropic().messages.create({
			model: t.isolatedModel(T.format), max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		}, { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '7' } }), Anthropic.RateLimitError, 429);
		eq(err.error?.type, 'error', `error body in the Anthropic shape: ${JSON.stringify(err.error)}`);
		eq(err.error?.error?.type, 'rate_limit_error', 'error.type');
		eq(err.headers?.get('retry-after'), '7', 'Retry-After');
	});

	test(n('error_429_stream'), async (t) => {
		const stream = t.anthropic().messages.stream({
			model: t.isolatedModel(T.format), max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		}, { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '3' } });
		const err = await expectError(() => stream.finalMessage(), Anthropic.RateLimitError, 429);
		eq(err.error?.error?.type, 'rate_limit_error', 'error.type');
		eq(err.headers?.get('retry-after'), '3', 'Retry-After');
	});
}

test('sdk.anthropic.error_404_unknown_model', async (t) => {
	const err = await expectError(() => t.anthropic().messages.create({
		model: 'no-such-model', max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
	}), Anthropic.NotFoundError, 404);
	eq(err.error?.type, 'error', `error body in the Anthropic shape: ${JSON.stringify(err.error)}`);
	ok(/no-such-model/.test(err.error?.error?.message || ''), 'error message names the model');
	// (the SDK's err.requestID reads Anthropic's `request-id` header; the
	// gateway's own errors carry x-request-id)
	ok(err.headers?.get('x-request-id'), 'x-request-id on the error');
	eq((await t.mockStats()).last_request, null, 'nothing went upstream');
});

test('sdk.anthropic.error_404_count_tokens', async (t) => {
	await expectError(() => t.anthropic().messages.countTokens({
		model: 'no-such-model', messages: [{ role: 'user', content: 'Say hello' }],
	}), Anthropic.NotFoundError, 404);
});

test('sdk.anthropic.error_400_bad_model_type', async (t) => {
	const err = await expectError(() => t.anthropic().messages.create({
		model: 42, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
	}), Anthropic.BadRequestError, 400);
	eq(err.error?.type, 'error', `error body in the Anthropic shape: ${JSON.stringify(err.error)}`);
});

test('sdk.anthropic.error_401_bad_key', async (t) => {
	const client = t.anthropic({ apiKey: 'sk-sluice-not-a-key-0000' });
	let err;
	try {
		await client.messages.create({
			model: 'claude-sonnet-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'Say hello' }],
		});
	} catch (e) {
		err = e;
	}
	ok(err, 'the gateway accepted an unknown client key');
	ok(err instanceof Anthropic.AuthenticationError,
		`threw ${err.constructor.name} (status ${err.status}), want AuthenticationError 401`);
	eq(err.status, 401, 'status');
	eq(err.error?.error?.type, 'authentication_error', 'error.type');
});

test('sdk.anthropic.models_list', async (t) => {
	const ids = [];
	for await (const m of t.anthropic().models.list())
		ids.push(m.id);
	for (const want of ['gpt-4o-mini', 'claude-sonnet-4-5'])
		ok(ids.includes(want), `${want} not listed (got ${ids.slice(0, 8).join(',')}...)`);
});

test('sdk.anthropic.models_retrieve_alias', async (t) => {
	const m = await t.anthropic().models.retrieve('claude-sonnet-4-5-20250929');
	eq(m.id, 'claude-sonnet-4-5', 'an alias resolves to its model');
});

// --------------------------------------------------------------------------
// Thinking blocks, parallel tool use, cache usage and stop sequences, with the
// mock's thinking output, x-mock-parallel-tools / x-mock-text-before-tools /
// x-mock-cache-* headers and its stop-sequence handling (tools/mock.md).

const THINKING = 'Let me think about this.'; // the mock's thinking text (5 deltas)
const SIGNATURE_RE = /^[A-Za-z0-9+/]{40,}={0,2}$/; // what the mock signs with (base64)
const TIME_TOOL = { name: 'get_time', description: 'The time somewhere', input_schema: WEATHER_SCHEMA };
// The mock's words n words from word k on: tool call k's input text.
const words = (n, k = 0) => mockText(n + k).slice(mockText(k).length);
const THINK_ON = { type: 'enabled', budget_tokens: 1024 };

async function upstreamInputTokens(t) {
	const st = await t.mockStats();
	return Math.max(Math.floor(st.last_request.body_len / 4), 1);
}

// A thinking block as the client sees it: the mock's text; from an Anthropic
// upstream its signature as sent; from an OpenAI-format one (reasoning_content
// has none) whatever string the gateway puts there.
function checkThinkingBlock(b, T, what) {
	eq(b?.type, 'thinking', `${what}: type`);
	eq(b.thinking, THINKING, `${what}: thinking`);
	ok(typeof b.signature === 'string', `${what}: signature is not a string: ${JSON.stringify(b.signature)}`);
	if (T.format === 'anthropic')
		ok(SIGNATURE_RE.test(b.signature), `${what}: signature ${JSON.stringify(b.signature)} is not the upstream's`);
}

for (const T of TARGETS) {
	const n = (name) => `sdk.anthropic.${name}.${T.tag}`;

	test(n('thinking_blocks'), async (t) => {
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 2048, thinking: THINK_ON,
			messages: [{ role: 'user', content: 'Think, then say hello' }],
		});
		eq(m.content.map((b) => b.type), ['thinking', 'text'], 'content block types');
		checkThinkingBlock(m.content[0], T, 'thinking block');
		eq(m.content[1].text, TEXT, 'text block');
		eq(m.stop_reason, 'end_turn', 'stop_reason');
		checkUsage(m.usage, 5 + 8); // thinking is output too
	});

	test(n('thinking_stream'), async (t) => {
		const stream = t.anthropic().messages.stream({
			model: T.model, max_tokens: 2048, thinking: THINK_ON,
			messages: [{ role: 'user', content: 'Think, then say hello' }],
		});
		const thinking = [];
		const signatures = [];
		const texts = [];
		const events = [];
		stream.on('thinking', (delta) => thinking.push(delta));
		stream.on('signature', (sig) => signatures.push(sig));
		stream.on('text', (delta) => texts.push(delta));
		stream.on('streamEvent', (e) => events.push(e));
		const final = await stream.finalMessage();
		checkEventOrder(events);
		const starts = events.filter((e) => e.type === 'content_block_start');
		eq(starts.map((e) => e.content_block.type), ['thinking', 'text'], 'content_block_start types');
		// thinking deltas never land in the text block, nor text in the thinking one
		for (const e of events.filter((x) => x.type === 'content_block_delta')) {
			const want = e.index === 0 ? ['thinking_delta', 'signature_delta'] : ['text_delta'];
			ok(want.includes(e.delta.type), `a ${e.delta.type} in block ${e.index}`);
		}
		eq(thinking.join(''), THINKING, "the 'thinking' deltas");
		ok(thinking.length >= 2, `only ${thinking.length} thinking delta(s): not streamed`);
		eq(texts.join(''), TEXT, "the 'text' deltas");
		checkThinkingBlock(final.content[0], T, 'finalMessage thinking block');
		if (T.format === 'anthropic') {
			eq(signatures.length, 1, "'signature' events");
			eq(final.content[0].signature, signatures[0], 'the signature_delta is the block signature');
		}
		eq(final.content.map((b) => b.type), ['thinking', 'text'], 'finalMessage content');
		eq(final.content[1].text, TEXT, 'finalMessage text');
		eq(final.stop_reason, 'end_turn', 'finalMessage stop_reason');
		checkUsage(final.usage, 5 + 8, 'finalMessage usage');
	});

	test(n('thinking_signature_round_trip'), async (t) => {
		// a tool loop with thinking: the thinking block (with its signature)
		// goes back with the tool result, unchanged, as the upstream requires
		const client = t.anthropic();
		const messages = [{ role: 'user', content: 'Weather in Paris?' }];
		const m1 = await client.messages.create({
			model: T.model, max_tokens: 2048, thinking: THINK_ON, tools: [WEATHER_TOOL], messages,
		});
		eq(m1.content.map((b) => b.type), ['thinking', 'tool_use'], 'first answer content');
		eq(m1.stop_reason, 'tool_use', 'first answer stop_reason');
		checkThinkingBlock(m1.content[0], T, 'first answer thinking block');
		const use = m1.content[1];
		messages.push({ role: 'assistant', content: m1.content },
			{ role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'sunny' }] });
		const m2 = await client.messages.create({
			model: T.model, max_tokens: 2048, thinking: THINK_ON, tools: [WEATHER_TOOL], messages,
		});
		eq(m2.stop_reason, 'tool_use', 'second answer stop_reason');
		const up = await t.upstreamFor(T);
		const um = up.body.messages;
		eq(um.length, 3, 'upstream messages');
		if (T.format === 'anthropic') {
			eq(um[1].content[0], { type: 'thinking', thinking: THINKING, signature: m1.content[0].signature },
				'upstream thinking block (signature unchanged)');
			eq(um[1].content[1].id, use.id, 'upstream tool_use id');
		} else {
			eq(um[1].reasoning_content, THINKING, 'upstream assistant reasoning_content');
			eq(um[1].tool_calls?.[0]?.id, use.id, 'upstream tool call id');
			eq(um[2].tool_call_id, use.id, 'upstream tool_call_id');
		}
	});

	test(n('parallel_tool_use'), async (t) => {
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 200, tools: [WEATHER_TOOL, TIME_TOOL],
			messages: [{ role: 'user', content: 'Weather and time in Paris?' }],
		}, { headers: { 'x-mock-parallel-tools': '2' } });
		eq(m.stop_reason, 'tool_use', 'stop_reason');
		eq(m.content.map((b) => [b.type, b.name, b.input]),
			[['tool_use', 'get_weather', { text: words(8) }], ['tool_use', 'get_time', { text: words(8, 1) }]],
			'tool_use blocks');
		ok(m.content.every((b) => /^[a-zA-Z0-9_-]+$/.test(b.id)), 'tool_use ids match [a-zA-Z0-9_-]+');
		ok(m.content[0].id !== m.content[1].id, 'distinct tool_use ids');
		checkUsage(m.usage, 16);
	});

	for (const order of ['interleaved', 'sequential']) {
		test(n(`parallel_tool_use_stream_${order}`), async (t) => {
			// from an OpenAI-format upstream the calls' fragments come
			// interleaved (or one call after another): the client still sees
			// one complete tool_use block after another
			const stream = t.anthropic().messages.stream({
				model: T.model, max_tokens: 200, tools: [WEATHER_TOOL, TIME_TOOL],
				messages: [{ role: 'user', content: 'Weather and time in Paris?' }],
			}, { headers: { 'x-mock-parallel-tools': '2', 'x-mock-tool-order': order } });
			const events = [];
			stream.on('streamEvent', (e) => events.push(e));
			const final = await stream.finalMessage();
			checkEventOrder(events);
			const starts = events.filter((e) => e.type === 'content_block_start');
			eq(starts.map((e) => [e.index, e.content_block.type, e.content_block.name]),
				[[0, 'tool_use', 'get_weather'], [1, 'tool_use', 'get_time']], 'content_block_start events');
			for (const s of starts) {
				const jd = events.filter((e) => e.type === 'content_block_delta' && e.index === s.index);
				ok(jd.length >= 2 && jd.every((e) => e.delta.type === 'input_json_delta'),
					`block ${s.index}: input_json_delta deltas`);
				eq(JSON.parse(jd.map((e) => e.delta.partial_json).join('')), { text: words(8, s.index) },
					`block ${s.index}: joined partial_json`);
			}
			eq(final.content.map((b) => [b.name, b.input]),
				[['get_weather', { text: words(8) }], ['get_time', { text: words(8, 1) }]], 'finalMessage tool_use');
			ok(final.content[0].id && final.content[0].id !== final.content[1].id, 'distinct ids');
			eq(final.stop_reason, 'tool_use', 'stop_reason');
			checkUsage(final.usage, 16, 'finalMessage usage');
		});
	}

	test(n('parallel_tool_results_round_trip'), async (t) => {
		const client = t.anthropic();
		const messages = [{ role: 'user', content: 'Weather and time in Paris?' }];
		const m1 = await client.messages.create({
			model: T.model, max_tokens: 200, tools: [WEATHER_TOOL, TIME_TOOL], messages,
		}, { headers: { 'x-mock-parallel-tools': '2' } });
		const [a, b] = m1.content;
		eq([a?.type, b?.type], ['tool_use', 'tool_use'], 'first answer content');
		messages.push({ role: 'assistant', content: m1.content }, { role: 'user', content: [
			{ type: 'tool_result', tool_use_id: a.id, content: 'sunny' },
			{ type: 'tool_result', tool_use_id: b.id, content: '14:00' },
		] });
		const m2 = await client.messages.create({ model: T.model, max_tokens: 200, messages });
		eq(m2.content.map((x) => [x.type, x.text]), [['text', TEXT]], 'second answer');
		const up = await t.upstreamFor(T);
		const um = up.body.messages;
		if (T.format === 'openai') {
			eq(um.map((m) => m.role), ['user', 'assistant', 'tool', 'tool'], 'upstream roles');
			eq(um[1].tool_calls.map((tc) => [tc.id, tc.function.name]), [[a.id, 'get_weather'], [b.id, 'get_time']],
				'upstream tool_calls');
			eq(um.slice(2).map((m) => [m.tool_call_id, flatText(m.content)]), [[a.id, 'sunny'], [b.id, '14:00']],
				'upstream tool messages (both, in order, once)');
		} else {
			eq(um[2].content.map((x) => x.tool_use_id), [a.id, b.id], 'upstream tool_result ids');
		}
	});

	test(n('text_then_tool_use_stream'), async (t) => {
		const stream = t.anthropic().messages.stream({
			model: T.model, max_tokens: 200, tools: [WEATHER_TOOL],
			messages: [{ role: 'user', content: 'Weather in Paris?' }],
		}, { headers: { 'x-mock-text-before-tools': '1' } });
		const events = [];
		stream.on('streamEvent', (e) => events.push(e));
		const final = await stream.finalMessage();
		checkEventOrder(events);
		eq(final.content.map((b) => b.type), ['text', 'tool_use'], 'finalMessage content');
		eq(final.content[0].text, TEXT, 'text block');
		eq([final.content[1].name, final.content[1].input], ['get_weather', { text: TEXT }], 'tool_use block');
		eq(final.stop_reason, 'tool_use', 'stop_reason');
		checkUsage(final.usage, 16, 'finalMessage usage');
	});

	test(n('cache_usage'), async (t) => {
		// the upstream read 100 input tokens from its cache (an Anthropic one
		// also wrote 50); input_tokens counts the uncached ones only
		const headers = { 'x-mock-cache-read': '100', 'x-mock-cache-write': '50' };
		const m = await t.anthropic().messages.create({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		}, { headers });
		const base = await upstreamInputTokens(t);
		checkUsage(m.usage, 8);
		eq(m.usage.cache_read_input_tokens, 100, 'usage.cache_read_input_tokens');
		eq(m.usage.input_tokens, base, 'usage.input_tokens (the uncached input only)');
		if (T.format === 'anthropic')
			eq(m.usage.cache_creation_input_tokens, 50, 'usage.cache_creation_input_tokens');
		else
			ok(!m.usage.cache_creation_input_tokens, `usage.cache_creation_input_tokens: ${m.usage.cache_creation_input_tokens}`);

		const final = await t.anthropic().messages.stream({
			model: T.model, max_tokens: 100, messages: [{ role: 'user', content: 'Say hello' }],
		}, { headers }).finalMessage();
		const sbase = await upstreamInputTokens(t);
		checkUsage(final.usage, 8, 'finalMessage usage');
		eq(final.usage.cache_read_input_tokens, 100, 'finalMessage usage.cache_read_input_tokens');
		eq(final.usage.input_tokens, sbase, 'finalMessage usage.input_tokens');
	});

	test(n('stop_sequence'), async (t) => {
		// the mock stops before a word equal to a stop sequence; an
		// OpenAI-format upstream does not say which one matched
		const check = (m, what) => {
			eq(m.content.map((b) => [b.type, b.text]), [['text', mockText(3)]], `${what}: content`);
			if (T.format === 'anthropic' || m.stop_reason === 'stop_sequence')
				eq([m.stop_reason, m.stop_sequence], ['stop_sequence', 'mock'], `${what}: stop_reason, stop_sequence`);
			else
				eq([m.stop_reason, m.stop_sequence ?? null], ['end_turn', null], `${what}: stop_reason, stop_sequence`);
			checkUsage(m.usage, 3, `${what}: usage`);
		};
		const params = {
			model: T.model, max_tokens: 100, stop_sequences: ['END', 'mock'],
			messages: [{ role: 'user', content: 'Say hello' }],
		};
		check(await t.anthropic().messages.create(params), 'create');
		check(await t.anthropic().messages.stream(params).finalMessage(), 'stream');
	});
}
